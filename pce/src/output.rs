//! How commands print: a sentence or a table for people, one JSON document
//! for scripts (`--json`), and progress on stderr, so that a pipe or a
//! `$(...)` gets the result alone.
//!
//! Progress of a long operation is one line rewritten in place at a
//! terminal, and a plain line every few seconds elsewhere (a CI log or a
//! journal has no use for carriage returns, and no colour is ever written).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::pin::{pin, Pin};
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
pub async fn with_progress<T, W, P, F>(what: &str, work: W, probe: P) -> T
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
    progress_every(what, work, probe, every, tty).await
}

/// [`with_progress`] with its interval and terminal choice given.
async fn progress_every<T, W, P, F>(
    what: &str,
    work: W,
    mut probe: P,
    every: Duration,
    tty: bool,
) -> T
where
    W: Future<Output = T>,
    P: FnMut() -> F,
    F: Future<Output = Option<String>>,
{
    let started = Instant::now();
    let mut work = pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // A slow probe (a region that does not answer) skips ticks, never queues them.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The probe runs beside the work, never instead of it: the work's answer
    // is taken the moment it comes.
    let mut asking: Option<Pin<Box<F>>> = None;
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
            _ = tick.tick(), if asking.is_none() => {
                asking = Some(Box::pin(probe()));
            }
            seen = async {
                match asking.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if asking.is_some() => {
                asking = None;
                if let Some(d) = seen {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A probe that never answers (a region that hangs) must not hold back
    /// the work's result: the work ends, and so does the call.
    #[tokio::test]
    async fn a_hanging_probe_does_not_hold_back_the_result() {
        let work = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            42
        };
        let probe = || std::future::pending::<Option<String>>();
        let got = tokio::time::timeout(
            Duration::from_secs(30),
            super::progress_every("test", work, probe, Duration::from_millis(5), false),
        )
        .await
        .expect("the work's result came back");
        assert_eq!(got, 42);
    }

    /// The probe's words reach the progress line while the work runs.
    #[tokio::test]
    async fn probes_run_while_the_work_runs() {
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let work = tokio::time::sleep(Duration::from_millis(200));
        let probe = || {
            asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Some("busy".to_string()) }
        };
        super::progress_every("test", work, probe, Duration::from_millis(10), false).await;
        assert!(asked.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    }
}
