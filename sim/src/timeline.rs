//! A picture of a run: per node, which roles it led when, and when it was
//! crashed, paused or partitioned; as text (one row per node) and as SVG.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::time::SimTime;

/// What a span records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Tag {
    Crashed,
    Paused,
    Partitioned,
    Leading(usize),
}

/// A closed or open interval of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) node: usize,
    pub(crate) tag: Tag,
    /// The term, for leading spans.
    pub(crate) term: u64,
    pub(crate) start: SimTime,
    pub(crate) end: SimTime,
}

/// Spans and instantaneous marks of a run.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    nodes: usize,
    roles: usize,
    spans: Vec<Span>,
    open: BTreeMap<(usize, Tag), (u64, SimTime)>,
    marks: Vec<(SimTime, Option<usize>, &'static str)>,
}

impl Timeline {
    pub(crate) fn new(nodes: usize, roles: usize) -> Self {
        Self {
            nodes,
            roles,
            spans: Vec::new(),
            open: BTreeMap::new(),
            marks: Vec::new(),
        }
    }

    pub(crate) fn open(&mut self, node: usize, tag: Tag, term: u64, at: SimTime) {
        self.open.entry((node, tag)).or_insert((term, at));
    }

    pub(crate) fn close(&mut self, node: usize, tag: Tag, at: SimTime) {
        if let Some((term, start)) = self.open.remove(&(node, tag)) {
            self.spans.push(Span {
                node,
                tag,
                term,
                start,
                end: at,
            });
        }
    }

    pub(crate) fn mark(&mut self, at: SimTime, node: Option<usize>, label: &'static str) {
        self.marks.push((at, node, label));
    }

    pub(crate) fn close_all(&mut self, at: SimTime) {
        let open: Vec<(usize, Tag)> = self.open.keys().copied().collect();
        for (node, tag) in open {
            self.close(node, tag, at);
        }
    }

    /// One row per node, `width` columns over `[0, end]`: a digit is the
    /// role led (`*` for several), `X` crashed, `P` paused, `/`
    /// partitioned, `.` otherwise. World marks go on a last row.
    pub(crate) fn text(&self, end: SimTime, width: usize) -> String {
        let width = width.max(10);
        let total = end.as_nanos().max(1);
        let col = |t: SimTime| {
            let c = (u128::from(t.as_nanos()) * width as u128 / u128::from(total)) as usize;
            c.min(width - 1)
        };
        let mut rows = vec![vec!['.'; width]; self.nodes];
        let mut lead = vec![vec![0_usize; width]; self.nodes];
        for s in &self.spans {
            let (a, b) = (col(s.start), col(s.end));
            let (Some(row), Some(leads)) = (rows.get_mut(s.node), lead.get_mut(s.node)) else {
                continue;
            };
            for (cell, count) in row.iter_mut().zip(leads.iter_mut()).take(b + 1).skip(a) {
                match s.tag {
                    Tag::Crashed => *cell = 'X',
                    Tag::Paused if *cell != 'X' => *cell = 'P',
                    Tag::Partitioned if *cell == '.' => *cell = '/',
                    Tag::Leading(r) => {
                        *count += 1;
                        if matches!(*cell, '.' | '/') {
                            *cell = char::from_digit((r % 10) as u32, 10).unwrap_or('L');
                        } else if cell.is_ascii_digit() && *count > 1 {
                            *cell = '*';
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "  0s{:>w$}",
            format!("{:.0}s", end.as_secs_f64()),
            w = width
        );
        for (n, row) in rows.iter().enumerate() {
            let _ = writeln!(out, "  n{n:<3}{}", row.iter().collect::<String>());
        }
        let mut world = vec![' '; width];
        for (at, _, label) in &self.marks {
            let ch = match *label {
                "pg-restart" => 'R',
                "terminate" => 'T',
                "heal" => 'H',
                _ => '!',
            };
            world[col(*at)] = ch;
        }
        let _ = writeln!(out, "  db  {}", world.iter().collect::<String>());
        let _ = writeln!(
            out,
            "  (digit = role led, * = several, X crashed, P paused, / partitioned; R pg restart, T terminate, H heal)"
        );
        out
    }

    /// An SVG Gantt chart: per node, a fault lane (red crashed or down,
    /// dark grey paused, light grey partitioned) and one lane per role with
    /// leading spans in the role's colour (hover: term and times); dashed
    /// red lines mark database restarts, terminations and the heal.
    pub(crate) fn svg(&self, end: SimTime) -> String {
        const W: f64 = 1000.0;
        const LANE: f64 = 14.0;
        const LEFT: f64 = 50.0;
        let colors = [
            "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf",
        ];
        let total = end.as_secs_f64().max(1e-9);
        let x = |t: SimTime| LEFT + t.as_secs_f64() / total * (W - LEFT - 10.0);
        let lanes_per_node = self.roles + 1;
        let height = (self.nodes * lanes_per_node) as f64 * LANE + 40.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="monospace" font-size="10">"#
        );
        for n in 0..self.nodes {
            let y = (n * lanes_per_node) as f64 * LANE + 10.0;
            let _ = writeln!(out, r#"<text x="2" y="{}">n{n}</text>"#, y + 10.0);
            for r in 0..self.roles {
                let yr = y + (r + 1) as f64 * LANE + 10.0;
                let _ = writeln!(out, r#"<text x="24" y="{yr}" fill="gray">r{r}</text>"#);
            }
        }
        let ticks = 10;
        for i in 0..=ticks {
            let t = SimTime::from_nanos(end.as_nanos() / ticks * i);
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" fill="gray">{:.0}s</text>"#,
                x(t),
                height - 4.0,
                t.as_secs_f64()
            );
        }
        for s in &self.spans {
            let base = (s.node * lanes_per_node) as f64 * LANE + 10.0;
            let (x0, x1) = (x(s.start), x(s.end).max(x(s.start) + 1.0));
            let (y, fill, label) = match s.tag {
                Tag::Crashed => (base, "#d62728", String::new()),
                Tag::Paused => (base, "#999999", String::new()),
                Tag::Partitioned => (base, "#dddddd", String::new()),
                Tag::Leading(r) => (
                    base + (r + 1) as f64 * LANE,
                    colors[r % colors.len()],
                    format!("r{r} t{}", s.term),
                ),
            };
            let _ = writeln!(
                out,
                r#"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}"><title>{label} {:.3}s-{:.3}s</title></rect>"#,
                x1 - x0,
                LANE - 2.0,
                s.start.as_secs_f64(),
                s.end.as_secs_f64()
            );
        }
        for (at, _, label) in &self.marks {
            let xm = x(*at);
            let _ = writeln!(
                out,
                r#"<line x1="{xm:.1}" y1="0" x2="{xm:.1}" y2="{height}" stroke="red" stroke-dasharray="2,2"><title>{label} {:.3}s</title></line>"#,
                at.as_secs_f64()
            );
        }
        out.push_str("</svg>\n");
        out
    }
}
