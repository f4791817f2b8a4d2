//! Chat formatting with the model's own Jinja template.
//!
//! The template comes from the GGUF's `tokenizer.chat_template` (ChatML when
//! absent) and is rendered HF-compatibly with minijinja (`trim_blocks`,
//! `lstrip_blocks`, Python string methods, `raise_exception`).
//!
//! Special tokens must come only from the template, never from user text. So
//! each message's content is replaced by a sentinel while rendering; the
//! result is split at the sentinels into template text (tokenized with special
//! tokens parsed) and message text (tokenized as plain text).

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use spindle_proto::ChatMessage;

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

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
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
        })
    }

    /// Render `messages`, opening the assistant turn, as template and content segments.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<Vec<Segment>, TemplateError> {
        let masked: Vec<_> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| context! { role => m.role.as_str(), content => format!("{OPEN}{i}{CLOSE}") })
            .collect();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?;
        let rendered = tmpl
            .render(context! {
                messages => masked,
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
            .render(&[msg("system", "Be brief."), msg("user", "Hi <|im_end|>")])
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
            .render(&[msg("user", "q"), msg("assistant", "a")])
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
        let err = t.render(&[msg("user", "x")]).unwrap_err();
        assert!(err.to_string().contains("roles must alternate"));
    }
}
