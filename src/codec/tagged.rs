//! Graphite tagged series names (`name;tag=value;…`, Graphite 1.1) in carbon's normal
//! form, as carbon's relay step makes them with `TAG_RELAY_NORMALIZED = True`
//! (`carbon.util.TaggedSeries.parse(name).path`, carbon 1.1.x). A pure function over one
//! name; it allocates only for a name it changes.
//!
//! Parsing, as carbon's:
//! - A name ending in `"}` and holding a `{` is OpenMetrics style, `name{k="v",…}`:
//!   exactly one `{` before the final `}`; each tag is `key="value"` (the key up to the
//!   first `=`; in the value `\"` and `\\` are escapes, turned into `"` and `\`), tags
//!   separated by `,` (or `:,`, a quirk of carbon's pattern).
//! - Otherwise `name;key=value;…`: split at `;`, each tag at its first `=`.
//! - The name loses its leading `~`s and must not be empty then; a key must be non-empty
//!   and free of `;!^=`; a value must be non-empty, free of `;` and not start with `~`.
//!   A tag named `name` is replaced by the name; of two tags with one key the last wins.
//!
//! Formatting: the name, then `;key=value` for every tag, these strings sorted (carbon
//! sorts the formatted `;key=value` strings, which is not always the order of the keys:
//! `;a-b=…` sorts before `;a=…`).

/// The outcome of [`normalize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized {
    /// The name is already in normal form (untagged names without a leading `~` always are).
    Same,
    /// The name in normal form.
    Changed(String),
    /// The name does not parse as a tagged series (carbon logs it and sends it unchanged);
    /// why.
    Invalid(&'static str),
}

/// `name` in carbon's normal tagged form (module docs).
pub fn normalize(name: &str) -> Normalized {
    if !name.contains([';', '{']) && !name.starts_with('~') && !name.is_empty() {
        return Normalized::Same;
    }
    match parse(name) {
        Ok(t) => {
            let out = t.format();
            if out == name {
                Normalized::Same
            } else {
                Normalized::Changed(out)
            }
        }
        Err(why) => Normalized::Invalid(why),
    }
}

/// A tagged series name parsed as carbon's `TaggedSeries.parse` does (module docs): the
/// name without leading `~`s and its tags, each key once (the last value wins), `name`
/// dropped. Values are owned, since OpenMetrics values unescape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged<'a> {
    /// The name part, e.g. `cpu.usage`.
    pub name: &'a str,
    /// `(key, value)` pairs in input order; [`Tagged::sort`] puts them in normal order.
    pub tags: Vec<(&'a str, String)>,
}

/// `name` parsed as a tagged series (both forms, module docs), or why it does not parse.
/// A name without `;` or `{` parses as itself with no tags.
///
/// ```
/// let mut t = aggd::codec::tagged::parse("~cpu;zone=eu.west;host=a").unwrap();
/// t.sort();
/// assert_eq!(t.name, "cpu");
/// assert_eq!(t.tags, [("host", "a".to_string()), ("zone", "eu.west".to_string())]);
/// assert_eq!(t.path(), "cpu;host=a;zone=eu.west");
/// ```
pub fn parse(name: &str) -> Result<Tagged<'_>, &'static str> {
    if name.ends_with("\"}") && name.contains('{') {
        parse_openmetrics(name)
    } else {
        parse_carbon(name)
    }
}

impl<'a> Tagged<'a> {
    /// Puts the tags in carbon's normal order (the formatted `;key=value` strings sorted).
    pub fn sort(&mut self) {
        let text = |t: &(&str, String)| {
            let (k, v) = (t.0.bytes(), t.1.bytes());
            k.chain(std::iter::once(b'=')).chain(v).collect::<Vec<u8>>()
        };
        self.tags.sort_by_cached_key(text);
    }

    /// The value of tag `key`, if the series has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|t| t.0 == key).map(|t| t.1.as_str())
    }

    /// The series in normal form: the name, then `;key=value` per tag in normal order.
    pub fn path(&self) -> String {
        self.format()
    }

    fn new(metric: &'a str) -> Result<Self, &'static str> {
        if metric.is_empty() {
            return Err("no metric name");
        }
        let name = metric.trim_start_matches('~');
        if name.is_empty() {
            return Err("the metric name is only `~`");
        }
        Ok(Tagged {
            name,
            tags: Vec::new(),
        })
    }

    fn add(&mut self, key: &'a str, value: String) -> Result<(), &'static str> {
        if key.is_empty() {
            return Err("empty tag key");
        }
        if value.is_empty() {
            return Err("empty tag value");
        }
        if key.contains([';', '!', '^', '=']) {
            return Err("a tag key holds one of `;!^=`");
        }
        if value.contains(';') {
            return Err("a tag value holds `;`");
        }
        if value.starts_with('~') {
            return Err("a tag value starts with `~`");
        }
        if key != "name" {
            match self.tags.iter_mut().find(|t| t.0 == key) {
                Some(t) => t.1 = value,
                None => self.tags.push((key, value)),
            }
        }
        Ok(())
    }

    fn format(&self) -> String {
        let mut parts: Vec<String> = self.tags.iter().map(|(k, v)| format!(";{k}={v}")).collect();
        parts.sort_unstable();
        let mut out =
            String::with_capacity(self.name.len() + parts.iter().map(String::len).sum::<usize>());
        out.push_str(self.name);
        parts.iter().for_each(|p| out.push_str(p));
        out
    }
}

/// `name;key=value;…`.
fn parse_carbon(path: &str) -> Result<Tagged<'_>, &'static str> {
    let mut segments = path.split(';');
    let mut t = Tagged::new(segments.next().unwrap_or(""))?;
    for seg in segments {
        let (k, v) = seg.split_once('=').ok_or("a tag without `=`")?;
        if k.is_empty() {
            return Err("empty tag key");
        }
        t.add(k, v.to_string())?;
    }
    Ok(t)
}

/// `name{key="value",…}`.
fn parse_openmetrics(path: &str) -> Result<Tagged<'_>, &'static str> {
    let body = &path[..path.len() - 1];
    let (metric, mut raw) = body.split_once('{').ok_or("no `{`")?;
    if raw.contains('{') {
        return Err("more than one `{`");
    }
    let mut t = Tagged::new(metric)?;
    while !raw.is_empty() {
        let (key, rest) = raw.split_once('=').ok_or("a tag without `=`")?;
        let rest = rest.strip_prefix('"').ok_or("a tag value without quotes")?;
        let end = value_end(rest).ok_or("an unterminated tag value")?;
        if key.is_empty() || end == 0 {
            return Err("empty tag key or value");
        }
        let value = rest[..end].replace("\\\"", "\"").replace("\\\\", "\\");
        let after = &rest[end + 1..];
        raw = if after.is_empty() {
            after
        } else if let Some(a) = after.strip_prefix(',').or_else(|| after.strip_prefix(":,")) {
            a
        } else {
            return Err("tags not separated by `,`");
        };
        t.add(key, value)?;
    }
    Ok(t)
}

/// The byte offset of the `"` that ends an OpenMetrics tag value in `s` (the text after its
/// opening quote): the first `"` not escaped; `None` at a lone `\` or without one.
fn value_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => return Some(i),
            b'\\' if matches!(b.get(i + 1), Some(b'"' | b'\\')) => i += 2,
            b'\\' => return None,
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        match normalize(s) {
            Normalized::Same => s.to_string(),
            Normalized::Changed(c) => c,
            Normalized::Invalid(why) => format!("invalid: {why}"),
        }
    }

    #[test]
    fn carbon_form() {
        assert_eq!(normalize("a.b.c"), Normalized::Same);
        assert_eq!(normalize("cpu;a=1;b=2"), Normalized::Same);
        assert_eq!(n("cpu;zone=eu;host=a"), "cpu;host=a;zone=eu");
        assert_eq!(n("~cpu;b=1;a=2"), "cpu;a=2;b=1");
        assert_eq!(n("~plain"), "plain");
        assert_eq!(n("cpu;a=1;a=2"), "cpu;a=2");
        assert_eq!(n("cpu;name=other;x=1"), "cpu;x=1");
        assert_eq!(n("cpu;a=1;a-b=2"), "cpu;a-b=2;a=1");
        assert_eq!(n("cpu;k=v=w"), "cpu;k=v=w");
    }

    #[test]
    fn parsed_and_sorted_as_formatted() {
        for name in [
            "cpu;zone=eu;host=a",
            "cpu;a=1;a-b=2",
            "~x;b=2.5;a=z.y",
            "x{b=\"1\",a=\"2\"}",
        ] {
            let mut t = parse(name).unwrap();
            t.sort();
            let sorted = t.path();
            assert_eq!(n(name), sorted);
            let order: String = t.tags.iter().map(|(k, v)| format!(";{k}={v}")).collect();
            assert_eq!(format!("{}{order}", t.name), sorted, "{name}");
        }
        assert_eq!(parse("cpu;a=1").unwrap().get("a"), Some("1"));
        assert_eq!(parse("cpu;a=1").unwrap().get("b"), None);
        assert!(parse("plain.name").unwrap().tags.is_empty());
    }

    #[test]
    fn openmetrics_form() {
        assert_eq!(n("cpu{zone=\"eu\",host=\"a\"}"), "cpu;host=a;zone=eu");
        assert_eq!(n("cpu{a=\"x\\\"y\"}"), "cpu;a=x\"y");
        assert_eq!(n("cpu{a=\"1\":,b=\"2\"}"), "cpu;a=1;b=2");
    }

    #[test]
    fn unparsable_names() {
        for bad in [
            "",
            ";a=1",
            "~;a=1",
            "cpu;novalue",
            "cpu;=1",
            "cpu;a=",
            "cpu;a=~x",
            "cpu;a!b=1",
            "cpu{a=\"1\"b=\"2\"}",
            "c{p{u{a=\"1\"}",
            "{a=\"1\"}",
        ] {
            assert!(
                matches!(normalize(bad), Normalized::Invalid(_)),
                "{bad:?} -> {:?}",
                normalize(bad)
            );
        }
    }
}
