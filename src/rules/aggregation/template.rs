//! Output templates: `<env>.applications.<app>.all.requests`, or tagged ones such as
//! `cpu.total;dc=<dc>` (carbon-aggregator's `output_template`, filled from the input
//! pattern's fields).

use super::tagged;

/// One piece of an output template.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Field(String),
}

/// An output template such as `<env>.applications.<app>.all.requests`, or a tagged one
/// such as `cpu.total;dc=<dc>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    /// Holds `;`: the filled name is put in carbon's normal tagged form.
    tagged: bool,
}

impl Template {
    pub(super) fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['<', '>']) {
            if rest.as_bytes()[open] == b'>' {
                return Err(format!("unbalanced '>' in output template {text:?}"));
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('>')
                .ok_or_else(|| format!("unclosed '<' in output template {text:?}"))?;
            let name = &after[..close];
            if name.is_empty() || name.contains('<') {
                return Err(format!(
                    "output template {text:?} has an empty field or a '<<field>>' (multi-node fields are for input patterns only)"
                ));
            }
            parts.push(Part::Field(name.to_string()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        let tagged = text.contains(';');
        if tagged {
            tagged::check_template(text)?;
        }
        Ok(Template { parts, tagged })
    }

    /// Whether filling the template can give `name`: its literals in order, each field
    /// any text (captures of `<<field>>` hold dots). A tagged template is compared by its
    /// name part only, since filling it puts the tags in carbon's order.
    pub(super) fn could_make(&self, name: &str) -> bool {
        fn fits(parts: &[Part], s: &str) -> bool {
            match parts.split_first() {
                None => s.is_empty(),
                Some((Part::Literal(l), rest)) => {
                    s.strip_prefix(l.as_str()).is_some_and(|s| fits(rest, s))
                }
                Some((Part::Field(_), rest)) => (0..=s.len())
                    .filter(|&i| s.is_char_boundary(i))
                    .any(|i| fits(rest, &s[i..])),
            }
        }
        if !self.tagged {
            return fits(&self.parts, name);
        }
        let mut parts = Vec::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) if l.contains(';') => {
                    let head = &l[..l.find(';').unwrap_or(l.len())];
                    parts.push(Part::Literal(head.to_string()));
                    break;
                }
                p => parts.push(p.clone()),
            }
        }
        fits(&parts, name.split(';').next().unwrap_or(name))
    }

    pub(super) fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Fills the template, each field from `field`; a tagged template's result is put in
    /// carbon's normal form (left as filled if it does not parse, e.g. a captured value
    /// starting with `~`).
    pub(super) fn fill<'c>(&self, field: impl Fn(&str) -> Option<&'c str>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                // Load-time validation guarantees every field is a capture that took part
                // in the match (all groups are mandatory in translated patterns; a field
                // inside a user's optional group yields the empty string).
                Part::Field(f) => out.push_str(field(f).unwrap_or("")),
            }
        }
        if self.tagged
            && let crate::codec::tagged::Normalized::Changed(n) =
                crate::codec::tagged::normalize(&out)
        {
            return n;
        }
        out
    }
}
