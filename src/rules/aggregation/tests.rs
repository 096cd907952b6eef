//! Unit tests of `aggregation`.
use super::*;

fn rules(text: &str) -> AggregationRules {
    AggregationRules::parse(text, Path::new("test.conf")).unwrap()
}

fn err(text: &str) -> RuleError {
    AggregationRules::parse(text, Path::new("test.conf")).unwrap_err()
}

fn outputs(r: &AggregationRules, path: &str) -> Vec<String> {
    r.matches(path).into_iter().map(|(_, o)| o).collect()
}

#[test]
fn carbon_example_rules() {
    let r = rules(
        "# comment\n\n\
         <env>.applications.<app>.all.requests (60) = sum <env>.applications.<app>.*.requests\n\
         <env>.applications.<app>.all.latency (60) = avg <env>.applications.<app>.*.latency\n",
    );
    assert_eq!(r.rules().len(), 2);
    assert_eq!(r.rules()[0].line, 3);
    assert_eq!(r.rules()[0].frequency, 60);
    assert_eq!(r.rules()[0].method, Method::Sum);
    assert_eq!(
        outputs(&r, "prod.applications.apache.www01.requests"),
        ["prod.applications.apache.all.requests"]
    );
    assert_eq!(
        outputs(&r, "prod.applications.apache.www01.latency"),
        ["prod.applications.apache.all.latency"]
    );
    assert!(outputs(&r, "prod.applications.apache.www01.requests.x").is_empty());
    assert!(outputs(&r, "x.prod.applications.apache.www01.requests").is_empty());
}

#[test]
fn every_rule_applies_in_file_order() {
    let r = rules(
        "all.sum (60) = sum a.*\n\
         all.count (60) = count a.*\n\
         <x>.max (10) = max a.<x>\n",
    );
    assert_eq!(outputs(&r, "a.b"), ["all.sum", "all.count", "b.max"]);
}

#[test]
fn field_kinds() {
    let r = rules(
        "deep.<rest> (60) = sum in.<<rest>>.end\n\
         code.<code> (60) = sum web.code_<code>_total\n\
         star.<h> (60) = sum s.<h>.worker*\n",
    );
    assert_eq!(outputs(&r, "in.a.b.c.end"), ["deep.a.b.c"]);
    // Non-greedy capture (carbon #871).
    assert_eq!(outputs(&r, "web.code_200_total"), ["code.200"]);
    assert_eq!(outputs(&r, "web.code_5_0_3_total"), ["code.5_0_3"]);
    assert_eq!(outputs(&r, "s.h1.worker"), ["star.h1"]);
    assert_eq!(outputs(&r, "s.h1.worker17"), ["star.h1"]);
    // A lone `*` needs at least one character.
    let r = rules("x (60) = sum a.*.b\n");
    assert!(outputs(&r, "a..b").is_empty());
    assert_eq!(outputs(&r, "a.q.b"), ["x"]);
}

#[test]
fn regex_passes_through() {
    let r = rules("svc.<h>.hits (60) = sum svc.(web|api).<h>.hits\nd (60) = sum n\\d+\n");
    assert_eq!(outputs(&r, "svc.web.h1.hits"), ["svc.h1.hits"]);
    assert_eq!(outputs(&r, "svc.api.h2.hits"), ["svc.h2.hits"]);
    assert!(outputs(&r, "svc.db.h1.hits").is_empty());
    assert_eq!(outputs(&r, "n42"), ["d"]);
}

#[test]
fn tagged_paths_are_opaque_text() {
    let r = rules("sum.<s> (60) = sum rawt.<<s>>\n");
    assert_eq!(outputs(&r, "rawt.cpu;host=a"), ["sum.cpu;host=a"]);
}

#[test]
fn free_spacing_and_frequency_forms() {
    for line in [
        "a (60)=sum b",
        "a 60 = sum b",
        "a ((60)) = sum b",
        "  a\t(60) =  sum   b  ",
    ] {
        let r = rules(line);
        assert_eq!(r.rules()[0].frequency, 60, "{line}");
    }
}

#[test]
fn load_errors_name_the_line() {
    let e = err("ok (60) = sum a\nbad.<x> (60) = sum a.<y>\n");
    assert_eq!(e.line(), Some(2));
    assert!(e.to_string().contains("<x>"), "{}", e.to_string());
    assert_eq!(
        e.to_string().split(':').take(2).collect::<Vec<_>>(),
        ["test.conf", "2"]
    );
    assert_eq!(err("a (60) = rate b").line(), Some(1));
    assert!(
        err("a (60) = rate b")
            .to_string()
            .contains("unknown aggregation method")
    );
    assert!(err("a (0) = sum b").to_string().contains("frequency"));
    assert!(err("a (x) = sum b").to_string().contains("frequency"));
    assert!(err("a (60) = sum b c").to_string().contains("exactly"));
    assert!(err("a (60) sum b").to_string().contains("expected"));
    assert!(
        err("o.<<x>> (60) = sum a.<<x>>")
            .to_string()
            .contains("<<field>>")
    );
    assert!(err("o.x> (60) = sum a.<x>").to_string().contains("'>'"));
    assert!(err("o.<x (60) = sum a.<x>").to_string().contains("'<'"));
    assert!(err("o (60) = sum a.(b").to_string().contains("regex"));
    // Duplicate capture name: refused like carbon.
    assert_eq!(err("o (60) = sum <x>.<x>").line(), Some(1));
}

#[test]
fn pattern_translation() {
    assert_eq!(pattern_to_regex("a.*.b"), r"^(?:a\.[^.]+\.b)$");
    assert_eq!(pattern_to_regex("a.w*"), r"^(?:a\.w[^.]*)$");
    assert_eq!(pattern_to_regex("<x>.y"), r"^(?:(?P<x>[^.]+?)\.y)$");
    assert_eq!(pattern_to_regex("p<<x>>s"), r"^(?:p(?P<x>.+?)s)$");
}

fn captures(r: &AggregationRules, path: &str) -> Vec<Vec<(String, String)>> {
    r.explain(path)
        .into_iter()
        .map(|(_, m)| m.captures)
        .collect()
}

#[test]
fn tagged_pattern_ignores_tag_order() {
    let r = rules("cpu.total;dc=<dc> (60) = sum cpu.usage;dc=<dc>;host=*\n");
    for path in [
        "cpu.usage;dc=eu;host=a",
        "cpu.usage;host=a;dc=eu",
        "~cpu.usage;host=a;dc=eu",
        "cpu.usage{host=\"a\",dc=\"eu\"}",
    ] {
        assert_eq!(outputs(&r, path), ["cpu.total;dc=eu"], "{path}");
    }
    assert_eq!(
        captures(&r, "cpu.usage;host=a;dc=eu"),
        [[("dc".into(), "eu".into())]]
    );
}

#[test]
fn tagged_values_hold_dots_and_extra_tags_are_allowed() {
    let r = rules("cpu.<h>.by_dc;dc=<dc> (60) = sum cpu.<h>;dc=<dc>;env=prod\n");
    assert_eq!(
        outputs(&r, "cpu.h3;zone=z.1;env=prod;dc=eu.west.1"),
        ["cpu.h3.by_dc;dc=eu.west.1"]
    );
    assert_eq!(
        captures(&r, "cpu.h3;env=prod;dc=eu.west"),
        [[("h".into(), "h3".into()), ("dc".into(), "eu.west".into())]]
    );
    // The name part is still carbon's: `<h>` does not cross a dot.
    assert!(outputs(&r, "cpu.h.3;dc=eu;env=prod").is_empty());
    // Literal values are literal: the dot is not a regex wildcard.
    let r = rules("x (60) = sum m;dc=eu.west\n");
    assert_eq!(outputs(&r, "m;dc=eu.west"), ["x"]);
    assert!(outputs(&r, "m;dc=euXwest").is_empty());
}

#[test]
fn tagged_missing_tag_and_wrong_value_do_not_match() {
    let r = rules("s;dc=<dc> (60) = sum cpu;dc=<dc>;host=*\n");
    assert!(outputs(&r, "cpu;dc=eu").is_empty(), "host required");
    assert!(outputs(&r, "cpu").is_empty());
    assert!(outputs(&r, "cpu;host=a").is_empty(), "dc required");
    assert!(outputs(&r, "other;dc=eu;host=a").is_empty());
    assert!(outputs(&r, "cpu;dc=eu;host=").is_empty(), "does not parse");
    let r = rules("s (60) = sum cpu;env=prod\n");
    assert!(outputs(&r, "cpu;env=production").is_empty());
    assert!(outputs(&r, "cpu;env=pro").is_empty());
}

#[test]
fn tagged_value_patterns_and_negation() {
    let r = rules(
        "web.<n> (60) = sum req;host=web<n>\n\
         any (60) = count req;host=*;role=front*\n\
         notcanary (60) = sum req;host=*;canary!=true\n",
    );
    assert_eq!(
        outputs(&r, "req;host=web1.eu;role=frontend"),
        ["web.1.eu", "any", "notcanary"]
    );
    assert_eq!(outputs(&r, "req;host=db1;role=front"), ["any", "notcanary"]);
    assert_eq!(outputs(&r, "req;host=web2;canary=true"), ["web.2"]);
    assert_eq!(
        outputs(&r, "req;host=web2;canary=false"),
        ["web.2", "notcanary"]
    );
    assert_eq!(outputs(&r, "req;host=web"), ["notcanary"]);
}

#[test]
fn tagged_and_untagged_rules_keep_file_order() {
    let r = rules(
        "a (60) = sum cpu;dc=*\n\
         b (60) = sum cpu*\n\
         c;dc=<dc> (60) = sum cpu;dc=<dc>\n",
    );
    // The untagged rule sees the name as carbon does, an opaque string.
    assert_eq!(outputs(&r, "cpu;dc=eu"), ["a", "b", "c;dc=eu"]);
    assert_eq!(outputs(&r, "cpu"), ["b"]);
}

#[test]
fn tagged_output_templates_are_normalised() {
    let r = rules(
        "out;z=<h>;a=<dc> (60) = sum in;dc=<dc>;host=<h>\n\
         lit;env=prod (10) = sum plain.*\n",
    );
    assert_eq!(outputs(&r, "in;host=h1;dc=eu"), ["out;a=eu;z=h1"]);
    assert_eq!(outputs(&r, "plain.x"), ["lit;env=prod"]);
    assert_eq!(r.rules()[1].frequency, 10);
}

#[test]
fn carbon_rules_with_equals_in_the_pattern_split_as_carbon() {
    // The first `=` qualifies, so a pattern holding `=` (no `;`) stays carbon's regex.
    let r = rules("o (60) = sum a=b.*\n");
    assert_eq!(outputs(&r, "a=b.x"), ["o"]);
    assert!(r.rules()[0].tags.is_none());
}

#[test]
fn ambiguous_tagged_rules_are_refused_with_their_line() {
    for (rule, why) in [
        ("o (60) = sum ;dc=eu", "empty name part"),
        ("o (60) = sum cpu;;dc=eu", "empty tag term"),
        ("o (60) = sum cpu;dc=eu;", "empty tag term"),
        ("o (60) = sum cpu;dc", "has no `=`"),
        ("o (60) = sum cpu;dc=", "empty value"),
        ("o (60) = sum cpu;<k>=v", "must be literal"),
        ("o (60) = sum cpu;d*=v", "must be literal"),
        ("o (60) = sum cpu;name=x", "ambiguous"),
        ("o (60) = sum cpu;dc=a;dc=b", "named twice"),
        ("o (60) = sum cpu;dc=<a><b>", "more than one capture"),
        ("o (60) = sum cpu;dc=<a>*", "capture and `*`"),
        ("o (60) = sum cpu.<a>;dc=<a>", "captured twice"),
        ("o (60) = sum cpu;dc=<a>;h=<a>", "captured twice"),
        ("o (60) = sum cpu;dc!=<a>", "`!=`"),
        ("o (60) = sum cpu;dc!=eu", "at least one"),
        ("o;x (60) = sum cpu;dc=eu", "has no `=`"),
        ("o;<k>=v (60) = sum cpu;dc=<k>", "must be literal"),
        ("o;a=1;a=2 (60) = sum cpu;dc=eu", "named twice"),
        ("o;a=<x> (60) = sum cpu;dc=eu", "does not capture"),
    ] {
        let e = err(&format!("# c\n{rule}\n"));
        assert_eq!(e.line(), Some(2), "{rule}");
        let text = e.to_string();
        assert!(text.starts_with("test.conf:2: "), "{text}");
        assert!(text.contains(why), "{rule}: {text}");
    }
}

#[test]
fn the_rule_producing_an_output_series_is_found_by_template_method_and_frequency() {
    let r = rules(
        "<env>.all.requests (60) = sum <env>.*.requests\n\
         <env>.all.requests (60) = count <env>.*.requests\n\
         total.<rest> (10) = avg x.<<rest>>\n\
         cpu.total;dc=<dc> (60) = sum cpu.usage;dc=<dc>;host=*\n",
    );
    let line = |name, method, f| r.producing(name, method, f).map(|r| r.line);
    assert_eq!(line("prod.all.requests", "sum", 60), Some(1));
    assert_eq!(line("prod.all.requests", "count", 60), Some(2));
    assert_eq!(line("prod.all.requests", "sum", 10), None);
    assert_eq!(line("total.a.b.c", "avg", 10), Some(3));
    assert_eq!(line("totals.a", "avg", 10), None);
    assert_eq!(line("cpu.total;dc=eu.west", "sum", 60), Some(4));
    assert_eq!(line("mem.total;dc=eu", "sum", 60), None);
}
