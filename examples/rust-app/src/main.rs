//! logsum: summarises a log file as JSON.
//!
//! Each line `TIMESTAMP LEVEL [component] message` is parsed with a regex; lines are counted in
//! parallel with rayon; the summary is printed as JSON with sorted keys, so the output is the
//! same on every run and with any number of threads.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Summarise a log file: levels, components, HTTP statuses, latencies and frequent words.
#[derive(Parser, Debug)]
#[command(name = "logsum", version, about)]
struct Args {
    /// The log file to read.
    file: PathBuf,

    /// How many of the most frequent words to report.
    #[arg(short = 'n', long, default_value_t = 10)]
    top: usize,

    /// Ignore words shorter than this.
    #[arg(long, default_value_t = 4)]
    min_len: usize,

    /// Only count lines whose message matches this regex.
    #[arg(short, long)]
    grep: Option<String>,

    /// Pretty-print the JSON.
    #[arg(long)]
    pretty: bool,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
struct Latency {
    count: u64,
    total_ms: u64,
    mean_ms: u64,
    max_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct WordCount {
    word: String,
    count: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Summary {
    lines: u64,
    matched: u64,
    unparsed: u64,
    levels: BTreeMap<String, u64>,
    components: BTreeMap<String, u64>,
    http_status: BTreeMap<String, u64>,
    latency: Latency,
    top_words: Vec<WordCount>,
}

/// Per-chunk counts, merged with `reduce`.
#[derive(Default)]
struct Counts {
    matched: u64,
    unparsed: u64,
    levels: HashMap<String, u64>,
    components: HashMap<String, u64>,
    status: HashMap<String, u64>,
    words: HashMap<String, u64>,
    latency: Latency,
}

impl Counts {
    fn merge(mut self, other: Counts) -> Counts {
        self.matched += other.matched;
        self.unparsed += other.unparsed;
        for (dst, src) in [
            (&mut self.levels, other.levels),
            (&mut self.components, other.components),
            (&mut self.status, other.status),
            (&mut self.words, other.words),
        ] {
            for (k, v) in src {
                *dst.entry(k).or_default() += v;
            }
        }
        self.latency.count += other.latency.count;
        self.latency.total_ms += other.latency.total_ms;
        self.latency.max_ms = self.latency.max_ms.max(other.latency.max_ms);
        self
    }
}

struct Patterns {
    line: Regex,
    status: Regex,
    latency: Regex,
    word: Regex,
    grep: Option<Regex>,
}

fn count_line(p: &Patterns, min_len: usize, line: &str, c: &mut Counts) {
    let Some(caps) = p.line.captures(line) else {
        c.unparsed += 1;
        return;
    };
    let msg = &caps["msg"];
    if let Some(g) = &p.grep {
        if !g.is_match(msg) {
            return;
        }
    }
    c.matched += 1;
    *c.levels.entry(caps["level"].to_string()).or_default() += 1;
    *c.components.entry(caps["comp"].to_string()).or_default() += 1;
    if let Some(s) = p.status.captures(msg) {
        *c.status.entry(s[1].to_string()).or_default() += 1;
    }
    if let Some(l) = p.latency.captures(msg) {
        let ms: u64 = l[1].parse().unwrap_or(0);
        c.latency.count += 1;
        c.latency.total_ms += ms;
        c.latency.max_ms = c.latency.max_ms.max(ms);
    }
    for w in p.word.find_iter(msg) {
        let w = w.as_str().to_lowercase();
        if w.chars().count() >= min_len {
            *c.words.entry(w).or_default() += 1;
        }
    }
}

fn sorted(m: HashMap<String, u64>) -> BTreeMap<String, u64> {
    m.into_iter().collect()
}

fn summarise(text: &str, args: &Args) -> Result<Summary> {
    let p = Patterns {
        line: Regex::new(
            r"^(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)\s+(?P<level>[A-Z]+)\s+\[(?P<comp>[a-z0-9_-]+)\]\s+(?P<msg>.*)$",
        )?,
        status: Regex::new(r"\b(?:status|->)\s*=?\s*([1-5]\d\d)\b")?,
        latency: Regex::new(r"\b(\d+)ms\b")?,
        word: Regex::new(r"[A-Za-z][A-Za-z']*")?,
        grep: args
            .grep
            .as_deref()
            .map(Regex::new)
            .transpose()
            .context("invalid --grep regex")?,
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let counts = lines
        .par_iter()
        .fold(Counts::default, |mut c, line| {
            count_line(&p, args.min_len, line, &mut c);
            c
        })
        .reduce(Counts::default, Counts::merge);

    let mut words: Vec<WordCount> = counts
        .words
        .into_iter()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    words.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    words.truncate(args.top);

    let mut latency = counts.latency;
    latency.mean_ms = if latency.count == 0 { 0 } else { latency.total_ms / latency.count };

    Ok(Summary {
        lines: lines.len() as u64,
        matched: counts.matched,
        unparsed: counts.unparsed,
        levels: sorted(counts.levels),
        components: sorted(counts.components),
        http_status: sorted(counts.status),
        latency,
        top_words: words,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.top == 0 {
        bail!("--top must be at least 1");
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let summary = summarise(&text, &args)?;
    let json = if args.pretty {
        serde_json::to_string_pretty(&summary)?
    } else {
        serde_json::to_string(&summary)?
    };
    // Round trip through the derived Deserialize as a self-check.
    let back: Summary = serde_json::from_str(&json)?;
    assert_eq!(back, summary);
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["logsum", "unused.log"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    const LOG: &str = "\
2025-03-14T09:00:20Z INFO  [db] query users by id finished in 7ms
2025-03-14T09:00:45Z INFO  [http] GET /api/orders status=200 in 93ms
2025-03-14T09:01:00Z ERROR [http] POST /api/login status=500 in 1200ms
not a log line
";

    #[test]
    fn counts_levels_components_and_unparsed_lines() {
        let s = summarise(LOG, &args(&[])).unwrap();
        assert_eq!(s.lines, 4);
        assert_eq!(s.matched, 3);
        assert_eq!(s.unparsed, 1);
        assert_eq!(s.levels["INFO"], 2);
        assert_eq!(s.levels["ERROR"], 1);
        assert_eq!(s.components["http"], 2);
    }

    #[test]
    fn reads_statuses_and_latencies() {
        let s = summarise(LOG, &args(&[])).unwrap();
        assert_eq!(s.http_status["200"], 1);
        assert_eq!(s.http_status["500"], 1);
        assert_eq!(s.latency.count, 3);
        assert_eq!(s.latency.max_ms, 1200);
        assert_eq!(s.latency.mean_ms, (7 + 93 + 1200) / 3);
    }

    #[test]
    fn grep_keeps_only_matching_messages() {
        let s = summarise(LOG, &args(&["--grep", "api/"])).unwrap();
        assert_eq!(s.matched, 2);
        assert!(summarise(LOG, &args(&["--grep", "("])).is_err());
    }

    #[test]
    fn top_words_are_sorted_and_cut() {
        let s = summarise(LOG, &args(&["--top", "2", "--min-len", "3"])).unwrap();
        assert_eq!(s.top_words.len(), 2);
        assert!(s.top_words[0].count >= s.top_words[1].count);
    }
}
