//! How commands print: a sentence or a table for people, one JSON document
//! for scripts (`--json`), and progress on stderr, so that a pipe or a
//! `$(...)` gets the result alone.
//!
//! Progress of a long operation is one line rewritten in place at a
//! terminal, and a plain line every few seconds elsewhere (a CI log or a
//! journal has no use for carriage returns, and no colour is ever written).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::pin::pin;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

/// Prints `value` as JSON when `json`, else the text `text` makes.
pub fn print(json: bool, value: &Value, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

/// Runs `work` to its end while telling the operator, on stderr, that it
/// runs and how far it got: `probe` is asked about once a second and says
/// what it sees ("12 commands committed"), or `None` when it cannot tell.
pub async fn with_progress<T, W, P, F>(what: &str, work: W, mut probe: P) -> T
where
    W: Future<Output = T>,
    P: FnMut() -> F,
    F: Future<Output = Option<String>>,
{
    let tty = std::io::stderr().is_terminal();
    // At a terminal the line is redrawn each second; elsewhere a line every
    // five seconds is enough to show the command is alive.
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let started = Instant::now();
    let mut work = pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut detail = String::new();
    let mut drawn = false;
    loop {
        tokio::select! {
            out = &mut work => {
                if drawn {
                    // Leave the terminal's line clean for the result.
                    eprint!("\r{:width$}\r", "", width = what.len() + detail.len() + 24);
                }
                return out;
            }
            _ = tick.tick() => {
                if let Some(d) = probe().await {
                    detail = d;
                }
                let line = format!(
                    "{what}: {:.0} s{}{}",
                    started.elapsed().as_secs_f64(),
                    if detail.is_empty() { "" } else { ", " },
                    detail
                );
                if tty {
                    eprint!("\r{line}   ");
                    drawn = true;
                } else {
                    eprintln!("{line}");
                }
                let _ = std::io::stderr().flush();
            }
        }
    }
}

/// A step of a multi-step command, on stderr.
pub fn phase(what: impl std::fmt::Display) {
    eprintln!("{what}");
}
