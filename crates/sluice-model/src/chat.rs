//! The model's own Jinja chat template, rendered with minijinja (plus Python string methods
//! such as `.strip()`), with `add_generation_prompt` and the special-token variables templates
//! expect. Template problems are `ModelError::Template`, never panics.

use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// One chat message as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text content.
    pub content: String,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(fmt: String) -> String {
    // Templates use this for a "today's date" line; a fixed, documented value keeps renders
    // reproducible (same request, same tokens).
    let _ = fmt;
    "26 Jul 2024".to_string()
}

impl ChatTemplate {
    /// Compiles `source`; special-token variables come from `tokenizer`.
    pub fn new(source: &str, tokenizer: &Tokenizer) -> Result<Self> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::Template(format!("cannot compile the chat template: {e}")))?;
        let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        Ok(Self { env, bos_token: text(tokenizer.bos), eos_token: text(tokenizer.eos) })
    }

    /// Renders the conversation; with `add_generation_prompt` the assistant turn is opened.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ModelError::Template(format!("chat template missing: {e}")))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| ModelError::Template(format!("cannot render the chat template: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufFile, GgufWriter};

    fn tokenizer() -> Tokenizer {
        let bytes = GgufWriter::default()
            .string("tokenizer.ggml.model", "gpt2")
            .strings("tokenizer.ggml.tokens", &["a", "b", "<s>", "</s>"])
            .strings("tokenizer.ggml.merges", &["a b"])
            .u32("tokenizer.ggml.bos_token_id", 2)
            .u32("tokenizer.ggml.eos_token_id", 3)
            .build();
        Tokenizer::from_gguf(&GgufFile::from_bytes(bytes).unwrap()).unwrap()
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn renders_with_generation_prompt_and_python_methods() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content.strip() }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
            &tokenizer(),
        )
        .unwrap();
        let out = t.render(&[msg("user", "  hi  ")], true).unwrap();
        assert_eq!(out, "<s><user>hi<assistant>");
        assert_eq!(t.render(&[msg("user", "hi")], false).unwrap(), "<s><user>hi");
    }

    #[test]
    fn template_errors_are_errors_not_panics() {
        assert!(matches!(ChatTemplate::new("{% for %}", &tokenizer()), Err(ModelError::Template(_))));
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}",
            &tokenizer(),
        )
        .unwrap();
        let e = t.render(&[msg("user", "x")], true).unwrap_err().to_string();
        assert!(e.contains("first message must be system"), "{e}");
    }
}
