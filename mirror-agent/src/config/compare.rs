//! The comparison flags into [`CompareSettings`].

use std::path::PathBuf;

use crate::cli::CompareArgs;
use crate::compare::difflog::DEFAULT_RATE;
use crate::compare::rules::{CompareRules, RuleError};

/// Most `--diff-log` lines per second.
pub const MAX_DIFF_LOG_RATE: u32 = 100_000;
/// Most decoded body bytes kept per response and side (`--compare-body-limit`).
pub const MAX_BODY_LIMIT: usize = 16 << 20;

/// What `--compare` turns on: the rules, and the diff log (created when the run starts).
#[derive(Debug, Clone)]
pub struct CompareSettings {
    pub rules: CompareRules,
    /// `--diff-log FILE` and its lines per second.
    pub diff_log: Option<(PathBuf, u32)>,
}

/// `None` without `--compare` (then no comparison flag may be given). `--strip-header` names
/// (`stripped`) are redacted in the diff log.
pub fn build(a: &CompareArgs, stripped: &[String]) -> Result<Option<CompareSettings>, RuleError> {
    if !a.compare {
        let given = [
            ("--compare-body", a.compare_body.is_some()),
            ("--compare-body-limit", a.compare_body_limit.is_some()),
            ("--compare-ignore", !a.compare_ignore.is_empty()),
            ("--diff-log", a.diff_log.is_some()),
            ("--diff-log-rate", a.diff_log_rate.is_some()),
        ];
        return match given.iter().find(|(_, g)| *g) {
            Some((flag, _)) => Err(RuleError::NeedsCompare(flag)),
            None => Ok(None),
        };
    }
    if a.diff_log_rate == Some(0) {
        return Err(RuleError::ZeroRate);
    }
    if let Some(r) = a.diff_log_rate
        && r > MAX_DIFF_LOG_RATE
    {
        return Err(RuleError::Bound {
            flag: "--diff-log-rate",
            max: u64::from(MAX_DIFF_LOG_RATE),
        });
    }
    if let Some(l) = a.compare_body_limit
        && l > MAX_BODY_LIMIT
    {
        return Err(RuleError::Bound {
            flag: "--compare-body-limit",
            max: MAX_BODY_LIMIT as u64,
        });
    }
    let rules = CompareRules::new(
        &a.compare_ignore,
        a.compare_body.as_deref(),
        a.compare_body_limit,
        stripped,
    )?;
    Ok(Some(CompareSettings {
        rules,
        diff_log: a
            .diff_log
            .clone()
            .map(|p| (p, a.diff_log_rate.unwrap_or(DEFAULT_RATE))),
    }))
}
