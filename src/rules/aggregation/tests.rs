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
