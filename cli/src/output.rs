//! Where the commands print, and in which form: [`Output`], chosen once by
//! `--json`.
//!
//! - Text, for people (the default): short and aligned, built by each
//!   resource module from the pieces in [`crate::format`].
//! - JSON, for scripts: one pretty-printed document per command, shaped like
//!   the RPC's response (`{"queue": ...}`, `{"messages": [...]}`,
//!   `{"moved": 3}`); `top` prints one compact document per line, a line per
//!   frame.
//!
//! A command hands both renderings to [`Output::print`] as closures and
//! never asks which one was chosen; only the one asked for is built. Notes
//! for people (`deleted 3 messages` after `receive --delete`) go through
//! [`Output::note`], which prints nothing with `--json`: a script gets
//! exactly one document per command.
//!
//! Results go to stdout, and a closed pipe (`broker queue list | head -1`)
//! is not an error. Prompts and progress go to stderr, not through here.

use std::io::Write as _;

use anyhow::Context as _;
use serde_json::{Value, json};

/// The form of a command's output: text for people or JSON for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Text for people (the default).
    Text,
    /// JSON for scripts (`--json`).
    Json,
}

impl Output {
    /// JSON when `json` (the `--json` flag), else text.
    pub fn new(json: bool) -> Output {
        if json { Output::Json } else { Output::Text }
    }

    /// Prints a command's result: `text` for people, or the JSON document
    /// `json` pretty-printed on lines of its own.
    pub fn print(
        self,
        text: impl FnOnce() -> String,
        json: impl FnOnce() -> Value,
    ) -> anyhow::Result<()> {
        emit(&self.render(text, json)?)
    }

    /// [`Output::print`] for a command that changed something and has
    /// nothing to show: `text` for people, `{}` for scripts.
    pub fn done(self, text: impl FnOnce() -> String) -> anyhow::Result<()> {
        self.print(text, || json!({}))
    }

    /// Prints a note for people after the result; nothing with `--json`.
    pub fn note(self, text: impl FnOnce() -> String) -> anyhow::Result<()> {
        match self {
            Output::Text => emit(&text()),
            Output::Json => Ok(()),
        }
    }

    /// Prints one frame of a command that keeps printing (`top`): `text`
    /// as it is, or `json` as one compact line.
    pub fn frame(
        self,
        text: impl FnOnce() -> String,
        json: impl FnOnce() -> Value,
    ) -> anyhow::Result<()> {
        emit(&self.render_frame(text, json))
    }

    fn render(
        self,
        text: impl FnOnce() -> String,
        json: impl FnOnce() -> Value,
    ) -> anyhow::Result<String> {
        match self {
            Output::Text => Ok(text()),
            Output::Json => {
                let mut document = serde_json::to_string_pretty(&json())?;
                document.push('\n');
                Ok(document)
            }
        }
    }

    fn render_frame(self, text: impl FnOnce() -> String, json: impl FnOnce() -> Value) -> String {
        match self {
            Output::Text => text(),
            Output::Json => format!("{}\n", json()),
        }
    }
}

/// Writes to stdout; a closed pipe (`broker queue list | head -1`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_flag_chooses_the_form() {
        assert_eq!(Output::new(false), Output::Text);
        assert_eq!(Output::new(true), Output::Json);
    }

    #[test]
    fn results_are_text_or_one_pretty_document() {
        let text = || "deleted queue 'q'\n".to_owned();
        assert_eq!(
            Output::Text
                .render(text, || unreachable!("text only"))
                .unwrap(),
            "deleted queue 'q'\n"
        );
        let document = Output::Json
            .render(|| unreachable!("JSON only"), || json!({ "moved": 3 }))
            .unwrap();
        assert_eq!(document, "{\n  \"moved\": 3\n}\n");
    }

    #[test]
    fn frames_are_text_or_one_compact_line() {
        assert_eq!(
            Output::Text.render_frame(|| "frame\n".into(), || unreachable!("text only")),
            "frame\n"
        );
        assert_eq!(
            Output::Json.render_frame(
                || unreachable!("JSON only"),
                || json!({ "at_ms": 1, "queues": [] })
            ),
            "{\"at_ms\":1,\"queues\":[]}\n"
        );
    }

    #[test]
    fn notes_are_for_people_only() {
        Output::Json
            .note(|| unreachable!("a note with --json"))
            .unwrap();
    }
}
