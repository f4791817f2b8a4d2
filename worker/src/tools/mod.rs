//! Function tools on the worker: the call syntax a model writes
//! ([`ToolFormat`], chosen from its chat template or `--tool-call-format`),
//! how tools and calls are shown to it ([`prompt`]), parsing its output
//! ([`parser`]), and the grammar that forces a call ([`forced`]).

pub mod forced;
pub mod parser;
pub mod prompt;

/// `--tool-call-format`: a fixed syntax, or `auto` (from the template).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolCallFlag {
    #[default]
    Auto,
    Hermes,
    Llama3,
    Mistral,
    Json,
}

/// The syntax of a tool call in generated text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Hermes / Qwen: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`.
    Hermes,
    /// Llama 3: `{"name": …, "parameters": {…}}` leading the output,
    /// optionally after `<|python_tag|>`.
    Llama3,
    /// Mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]` (the
    /// marker is a control token that prints nothing, so a leading list counts too).
    Mistral,
    /// A plain `{"name": …, "arguments": …}` leading the output.
    Json,
}

impl ToolFormat {
    /// The format a chat template's source implies; `None` when the
    /// template does not render tools itself (the worker then shows the
    /// tools in Hermes syntax: see [`prompt`]).
    pub fn from_template(source: &str) -> Option<Self> {
        if !source.contains("tools") {
            return None;
        }
        Some(if source.contains("<tool_call>") {
            Self::Hermes
        } else if source.contains("[TOOL_CALLS]") {
            Self::Mistral
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            Self::Llama3
        } else {
            Self::Json
        })
    }

    /// The format to use: the flag's, else the template's, else Hermes
    /// (the fallback prompt's syntax).
    pub fn choose(flag: ToolCallFlag, template: &str) -> Self {
        match flag {
            ToolCallFlag::Hermes => Self::Hermes,
            ToolCallFlag::Llama3 => Self::Llama3,
            ToolCallFlag::Mistral => Self::Mistral,
            ToolCallFlag::Json => Self::Json,
            ToolCallFlag::Auto => Self::from_template(template).unwrap_or(Self::Hermes),
        }
    }

    /// Text that opens a call anywhere in the output.
    pub(crate) fn marker(self) -> Option<&'static str> {
        match self {
            Self::Hermes => Some("<tool_call>"),
            Self::Llama3 => Some("<|python_tag|>"),
            Self::Mistral => Some("[TOOL_CALLS]"),
            Self::Json => None,
        }
    }

    /// Text that closes a call (optional: a call whose JSON is complete
    /// counts without it).
    pub(crate) fn closer(self) -> Option<&'static str> {
        match self {
            Self::Hermes => Some("</tool_call>"),
            _ => None,
        }
    }

    /// The character that opens a call when it leads the output.
    pub(crate) fn leading(self) -> Option<&'static str> {
        match self {
            Self::Hermes => None,
            Self::Llama3 | Self::Json => Some("{"),
            Self::Mistral => Some("["),
        }
    }

    /// Whether a call body may be a list of calls.
    pub(crate) fn allows_list(self) -> bool {
        self == Self::Mistral
    }

    /// Characters that may separate leading calls.
    pub(crate) fn separators(self) -> &'static [char] {
        match self {
            Self::Llama3 => &[' ', '\t', '\n', '\r', ';'],
            _ => &[' ', '\t', '\n', '\r'],
        }
    }

    /// The key a call's arguments go under.
    pub(crate) fn arguments_key(self) -> &'static str {
        match self {
            Self::Llama3 => "parameters",
            _ => "arguments",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_template_unless_the_flag_says() {
        assert_eq!(ToolFormat::from_template(crate::template::CHATML), None);
        let qwen = "{% if tools %}<tools>{% endif %}<tool_call>";
        assert_eq!(ToolFormat::from_template(qwen), Some(ToolFormat::Hermes));
        let mistral = "{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]";
        assert_eq!(
            ToolFormat::from_template(mistral),
            Some(ToolFormat::Mistral)
        );
        let llama = "{% if tools %}{% endif %}<|start_header_id|>ipython";
        assert_eq!(ToolFormat::from_template(llama), Some(ToolFormat::Llama3));
        assert_eq!(
            ToolFormat::from_template("{{ tools | tojson }}"),
            Some(ToolFormat::Json)
        );
        assert_eq!(
            ToolFormat::choose(ToolCallFlag::Auto, "plain"),
            ToolFormat::Hermes
        );
        assert_eq!(
            ToolFormat::choose(ToolCallFlag::Mistral, qwen),
            ToolFormat::Mistral
        );
    }
}
