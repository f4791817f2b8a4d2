//! Chat formatting with the model's own Jinja template.
//!
//! The template comes from `--chat-template FILE` ([`TemplateFile`]), else
//! the GGUF's `tokenizer.chat_template`, else ChatML (with a warning at
//! load: a base model has no chat format of its own). It is rendered HF-compatibly with minijinja (`trim_blocks`,
//! `lstrip_blocks`, Python string methods, `raise_exception`).
//!
//! Special tokens must come only from the template, never from user text. So
//! each message's content is replaced by a sentinel while rendering; the
//! result is split at the sentinels into template text (tokenized with special
//! tokens parsed) and message text (tokenized as plain text).
//!
//! Tools: a template that mentions `tools` gets them (and each message's
//! `tool_calls` / `tool_call_id`) in the Hugging Face shape; any other gets
//! them written into the messages as text (`tools::prompt`).

use crate::tools::prompt::{fallback_messages, hf_tool_calls, hf_tools};
use crate::tools::ToolFormat;
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use spindle_proto::tools::FunctionTool;
use spindle_proto::ChatMessage;
use std::path::{Path, PathBuf};

/// ChatML, used by models whose GGUF carries no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Private-use characters that frame a sentinel; no template emits them.
const OPEN: char = '\u{10FFF0}';
const CLOSE: char = '\u{10FFF1}';

/// One piece of a rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text written by the template: special tokens in it are real.
    Template(String),
    /// Text supplied by the caller: tokenized as plain text.
    Content(String),
}

#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

impl TemplateError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Where a model's chat template came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// The GGUF's `tokenizer.chat_template`.
    Gguf,
    /// `--chat-template`.
    File(PathBuf),
    /// ChatML: the GGUF has no template and no file was given.
    ChatmlFallback,
}

/// The largest `--chat-template` file read (real templates are a few KB).
const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// A `--chat-template` file, read.
#[derive(Debug, Clone)]
pub struct TemplateFile {
    pub path: PathBuf,
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateFileError {
    #[error("--chat-template {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("--chat-template {0}: {1} bytes, more than the {MAX_TEMPLATE_BYTES} a chat template may have")]
    TooLarge(PathBuf, u64),
    #[error("--chat-template {0}: {1}")]
    Invalid(PathBuf, TemplateError),
}

impl TemplateFile {
    pub async fn read(path: &Path) -> Result<Self, TemplateFileError> {
        let io = |e| TemplateFileError::Read(path.to_owned(), e);
        let len = tokio::fs::metadata(path).await.map_err(io)?.len();
        if len > MAX_TEMPLATE_BYTES {
            return Err(TemplateFileError::TooLarge(path.to_owned(), len));
        }
        let source = tokio::fs::read_to_string(path).await.map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            source,
        })
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// The template renders `tools` itself.
    native_tools: bool,
}

impl ChatTemplate {
    /// Compile `source` (a Jinja chat template). `bos`/`eos` are the model's token texts.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |_fmt: String| -> String {
            // Templates use this for "today's date" lines; a fixed, honest value
            // keeps prompts (and so prefix-cache keys) stable across requests.
            String::new()
        });
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| TemplateError(e.to_string()))?;
        Ok(Self {
            env,
            bos: bos.to_owned(),
            eos: eos.to_owned(),
            native_tools: source.contains("tools"),
        })
    }

    /// Render a short user/assistant/user chat and check that the messages'
    /// text shows: a template given by hand must work before the first request.
    pub fn check(&self) -> Result<(), TemplateError> {
        let probe = [
            ChatMessage::text("user", "Hello."),
            ChatMessage::text("assistant", "Hi."),
            ChatMessage::text("user", "How are you?"),
        ];
        let segments = self.render(&probe, &[], ToolFormat::Hermes)?;
        let shown = segments
            .iter()
            .filter(|s| matches!(s, Segment::Content(_)))
            .count();
        if shown < probe.len() {
            return Err(TemplateError::new(format!(
                "rendered {shown} of {} messages' content (a chat template writes each message's `content`)",
                probe.len()
            )));
        }
        Ok(())
    }

    /// Whether the template renders tools and calls itself (as template
    /// text), rather than getting them as message text.
    pub fn renders_tools(&self) -> bool {
        self.native_tools
    }

    /// Render `messages`, opening the assistant turn, as template and
    /// content segments; `tools` are the functions offered this turn, and
    /// `format` the call syntax a template without tools is shown.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[FunctionTool],
        format: ToolFormat,
    ) -> Result<Vec<Segment>, TemplateError> {
        if !self.native_tools {
            let written = fallback_messages(messages, tools, format);
            return self.render_masked(&written, None);
        }
        let tools = (!tools.is_empty()).then(|| hf_tools(tools));
        self.render_masked(messages, tools)
    }

    fn render_masked(
        &self,
        messages: &[ChatMessage],
        tools: Option<serde_json::Value>,
    ) -> Result<Vec<Segment>, TemplateError> {
        let masked: Vec<_> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let calls = (!m.tool_calls.is_empty()).then(|| hf_tool_calls(&m.tool_calls));
                context! {
                    role => m.role.as_str(),
                    content => format!("{OPEN}{i}{CLOSE}"),
                    tool_calls => calls,
                    tool_call_id => m.tool_call_id.as_deref(),
                }
            })
            .collect();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?;
        let rendered = tmpl
            .render(context! {
                messages => masked,
                tools => tools,
                add_generation_prompt => true,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            })
            .map_err(|e| TemplateError(e.to_string()))?;
        Ok(split_segments(&rendered, messages))
    }
}

fn split_segments(rendered: &str, messages: &[ChatMessage]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut rest = rendered;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len_utf8()..];
        let Some(end) = after.find(CLOSE) else { break };
        let index = after[..end].parse::<usize>().ok();
        let Some(msg) = index.and_then(|i| messages.get(i)) else {
            break;
        };
        if start > 0 {
            out.push(Segment::Template(rest[..start].to_owned()));
        }
        if !msg.content.is_empty() {
            out.push(Segment::Content(msg.content.clone()));
        }
        rest = &after[end + CLOSE.len_utf8()..];
    }
    if !rest.is_empty() {
        out.push(Segment::Template(rest.to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::text(role, content)
    }

    #[test]
    fn chatml_renders_turns_and_opens_assistant() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let segs = t
            .render(
                &[msg("system", "Be brief."), msg("user", "Hi <|im_end|>")],
                &[],
                ToolFormat::Hermes,
            )
            .unwrap();
        assert_eq!(
            segs,
            vec![
                Segment::Template("<|im_start|>system\n".into()),
                Segment::Content("Be brief.".into()),
                Segment::Template("<|im_end|>\n<|im_start|>user\n".into()),
                Segment::Content("Hi <|im_end|>".into()),
                Segment::Template("<|im_end|>\n<|im_start|>assistant\n".into()),
            ]
        );
    }

    #[test]
    fn hf_style_template_with_python_methods_and_bos() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'].strip() }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let segs = t
            .render(
                &[msg("user", "q"), msg("assistant", "a")],
                &[],
                ToolFormat::Hermes,
            )
            .unwrap();
        assert_eq!(
            segs,
            vec![
                Segment::Template("<s>[INST] ".into()),
                Segment::Content("q".into()),
                Segment::Template(" [/INST]".into()),
                Segment::Content("a".into()),
                Segment::Template("</s>".into()),
            ]
        );
    }

    #[test]
    fn raise_exception_is_an_error_not_a_panic() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let err = t
            .render(&[msg("user", "x")], &[], ToolFormat::Hermes)
            .unwrap_err();
        assert!(err.to_string().contains("roles must alternate"));
    }

    fn weather_tool() -> FunctionTool {
        FunctionTool {
            name: "get_weather".into(),
            description: Some("Weather <|im_end|> of a city".into()),
            parameters: serde_json::json!({"type": "object"}),
            strict: false,
        }
    }

    #[test]
    fn a_template_without_tools_gets_them_as_message_text() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let segs = t
            .render(
                &[msg("user", "Weather?")],
                &[weather_tool()],
                ToolFormat::Hermes,
            )
            .unwrap();
        // The tool list is content (plain text), never template text.
        assert!(
            matches!(&segs[1], Segment::Content(c) if c.contains("<tools>") && c.contains("<|im_end|> of a city"))
        );
        assert!(segs
            .iter()
            .all(|s| !matches!(s, Segment::Template(t) if t.contains("get_weather"))));
    }

    #[test]
    fn a_template_with_tools_gets_them_in_the_hugging_face_shape() {
        let src = "{% if tools %}[T]{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}{% for m in messages %}{{ m.role }}:{{ m.content }}{% if m.tool_calls %}{% for c in m.tool_calls %}<{{ c.function.name }} {{ c.function.arguments.city }} {{ c.id }}>{% endfor %}{% endif %}{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %}|{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let call = spindle_proto::tools::ToolCall {
            call_id: "call_9".into(),
            name: "get_weather".into(),
            arguments: r#"{"city": "Oslo"}"#.into(),
        };
        let messages = [
            msg("user", "q"),
            ChatMessage {
                tool_calls: vec![call],
                ..msg("assistant", "")
            },
            ChatMessage {
                tool_call_id: Some("call_9".into()),
                ..msg("tool", "5C")
            },
        ];
        let segs = t
            .render(&messages, &[weather_tool()], ToolFormat::Hermes)
            .unwrap();
        let text: String = segs
            .iter()
            .map(|s| match s {
                Segment::Template(t) | Segment::Content(t) => t.as_str(),
            })
            .collect();
        assert_eq!(
            text,
            "[T]get_weather;user:q|assistant:<get_weather Oslo call_9>|tool:5C#call_9|"
        );
    }
}
