//! The profile format: every command and attribute form, every error with its file and line.

use super::entry;
use crate::Depth::{Children, Descendants, Entry};
use crate::{
    Command, DEFAULT_PRIORITY, Depth, EntryError, HoardEntry, MAX_LINE_LEN, MAX_PATH_LEN, MAX_PROFILE_LEN, PathError,
    ProfileError, ProfileErrorKind as K, format_entry, normalize_path, parse, parse_lines,
};

fn one(line: &str) -> Command {
    let commands = parse(line, "t.hoard").unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(commands.len(), 1, "{line:?}");
    commands.into_iter().next().unwrap()
}

fn add(line: &str) -> HoardEntry {
    match one(line) {
        Command::Add(e) => e,
        other => panic!("{line:?} gave {other:?}"),
    }
}

/// The error for `text` (labelled `my.hoard`): checks that its message names the file and the
/// line, and returns the kind.
fn error_at(text: &str, line: usize) -> K {
    let e = parse(text, "my.hoard").expect_err(text);
    assert_eq!(e.line, Some(line), "{text:?}: {e}");
    assert_eq!(e.label, "my.hoard");
    let message = e.to_string();
    assert!(message.starts_with(&format!("my.hoard:{line}: ")), "{message}");
    assert!(!message.contains('\n'), "{message:?}");
    e.kind
}

#[test]
fn add_without_attributes_has_default_priority_and_no_depth() {
    assert_eq!(add("a /afs/cell/x"), entry("/afs/cell/x", DEFAULT_PRIORITY, Entry, false));
    assert_eq!(add("add /afs/cell/x"), entry("/afs/cell/x", 10, Entry, false));
}

#[test]
fn add_attributes_in_every_form_and_order() {
    let cases: &[(&str, u16, Depth, bool)] = &[
        ("100", 100, Entry, false),
        ("1", 1, Entry, false),
        ("1000", 1000, Entry, false),
        ("007", 7, Entry, false),
        ("c", 10, Children, false),
        ("c+", 10, Children, true),
        ("d", 10, Descendants, false),
        ("d+", 10, Descendants, true),
        ("100:d+", 100, Descendants, true),
        ("d+:200", 200, Descendants, true),
        ("c:50", 50, Children, false),
        ("50:c", 50, Children, false),
        ("c+:3", 3, Children, true),
        ("999:d", 999, Descendants, false),
    ];
    for &(attrs, priority, depth, future) in cases {
        let line = format!("a /afs/cell/proj {attrs}");
        assert_eq!(add(&line), entry("/afs/cell/proj", priority, depth, future), "{line}");
    }
}

#[test]
fn delete_clear_and_list() {
    assert_eq!(one("d /afs/cell/x"), Command::Delete("/afs/cell/x".into()));
    assert_eq!(one("delete /afs/cell/x/"), Command::Delete("/afs/cell/x".into()));
    assert_eq!(one(r#"d "/afs/cell/my dir""#), Command::Delete("/afs/cell/my dir".into()));
    assert_eq!(one("c"), Command::Clear);
    assert_eq!(one("clear"), Command::Clear);
    assert_eq!(one("l"), Command::List);
    assert_eq!(one("list"), Command::List);
}

#[test]
fn comments_blank_lines_and_whitespace_are_ignored() {
    let text = "# a comment\n\n   \n\t# indented comment\n  a   /afs/cell/x\t 100:c  \r\n\n#a /afs/no\nl";
    let lines = parse_lines(text, "t").unwrap();
    assert_eq!(lines, vec![(5, Command::Add(entry("/afs/cell/x", 100, Children, false))), (8, Command::List)],);
    assert_eq!(parse("", "t").unwrap(), vec![]);
    assert_eq!(parse("\n\n# only comments\n", "t").unwrap(), vec![]);
}

#[test]
fn commands_keep_their_order() {
    let text = "a /a 5\nd /a\nc\na /b d+\nl\n";
    assert_eq!(
        parse(text, "t").unwrap(),
        vec![
            Command::Add(entry("/a", 5, Entry, false)),
            Command::Delete("/a".into()),
            Command::Clear,
            Command::Add(entry("/b", 10, Descendants, true)),
            Command::List,
        ],
    );
}

#[test]
fn paths_are_normalised() {
    assert_eq!(add("a /afs//cell///x/").path, "/afs/cell/x");
    assert_eq!(add("a / d+").path, "/");
    assert_eq!(add("a //// 5").path, "/");
    assert_eq!(add("a /afs/x.y/..z/.hidden").path, "/afs/x.y/..z/.hidden");
}

#[test]
fn quoted_paths_hold_spaces_quotes_and_backslashes() {
    assert_eq!(add(r#"a "/afs/cell/my dir" 50"#), entry("/afs/cell/my dir", 50, Entry, false));
    assert_eq!(add(r#"a "/afs/a \"quoted\" name" c"#).path, r#"/afs/a "quoted" name"#);
    assert_eq!(add(r#"a "/afs/back\\slash""#).path, r"/afs/back\slash");
    assert_eq!(add("a \"/afs/no\u{a0}break\"\t7"), entry("/afs/no\u{a0}break", 7, Entry, false));
    assert_eq!(add(r#"a "/afs/#not a comment""#).path, "/afs/#not a comment");
    // Outside quotes, every character stands for itself.
    assert_eq!(add(r#"a /afs/odd"name\x 3"#).path, r#"/afs/odd"name\x"#);
}

#[test]
fn format_entry_writes_canonical_lines() {
    assert_eq!(format_entry(&entry("/afs/x", 10, Entry, false)), "a /afs/x 10");
    assert_eq!(format_entry(&entry("/afs/x", 100, Children, false)), "a /afs/x 100:c");
    assert_eq!(format_entry(&entry("/afs/x", 1, Children, true)), "a /afs/x 1:c+");
    assert_eq!(format_entry(&entry("/afs/x", 1000, Descendants, false)), "a /afs/x 1000:d");
    assert_eq!(format_entry(&entry("/afs/x", 5, Descendants, true)), "a /afs/x 5:d+");
    assert_eq!(format_entry(&entry("/afs/my dir", 5, Entry, false)), r#"a "/afs/my dir" 5"#);
    assert_eq!(format_entry(&entry(r#"/a"b\c"#, 5, Entry, false)), r#"a "/a\"b\\c" 5"#);
}

#[test]
fn the_longest_path_fully_escaped_still_fits_a_line() {
    let e = HoardEntry::new(&format!("/{}", "\"".repeat(MAX_PATH_LEN - 1)), 1000, Children, true).unwrap();
    let line = format_entry(&e);
    assert!(line.len() <= MAX_LINE_LEN, "{}", line.len());
    assert_eq!(parse(&line, "t").unwrap(), vec![Command::Add(e)]);
}

#[test]
fn unknown_command() {
    assert_eq!(error_at("a /x\nfrobnicate /x", 2), K::UnknownCommand("frobnicate".into()));
    assert_eq!(error_at("A /x", 1), K::UnknownCommand("A".into()));
    assert_eq!(error_at("a/x", 1), K::UnknownCommand("a/x".into()));
    // Comments are whole lines only.
    assert_eq!(error_at("\n\na /x 5 # why", 3), K::TrailingGarbage("# why".into()));
}

#[test]
fn missing_path() {
    assert_eq!(error_at("a", 1), K::MissingPath("a".into()));
    assert_eq!(error_at("# c\nd   ", 2), K::MissingPath("d".into()));
}

#[test]
fn relative_and_bad_paths() {
    let bad = |text: &str, line: usize| match error_at(text, line) {
        K::BadPath { reason, .. } => reason,
        other => panic!("{text:?}: {other:?}"),
    };
    assert_eq!(bad("a afs/x", 1), PathError::Relative);
    assert_eq!(bad("l\nd x", 2), PathError::Relative);
    assert_eq!(bad(r#"a """#, 1), PathError::Relative);
    assert_eq!(bad("a /afs/../etc", 1), PathError::DotComponent);
    assert_eq!(bad("a /afs/./x", 1), PathError::DotComponent);
    assert_eq!(bad("a /afs/x/..", 1), PathError::DotComponent);
    assert_eq!(bad("a /afs/nul\0x", 1), PathError::ControlChar);
    assert_eq!(bad("a \"/afs/bell\x07\"", 1), PathError::ControlChar);
    assert_eq!(bad(&format!("a /{}", "x".repeat(MAX_PATH_LEN)), 1), PathError::TooLong);
    let e = parse("a afs/x", "my.hoard").unwrap_err().to_string();
    assert!(e.contains("\"afs/x\"") && e.contains("absolute"), "{e}");
}

#[test]
fn bad_priority() {
    for p in ["0", "1001", "65536", "99999999999999999999", "-5", "+5", "10x", "1.5"] {
        assert_eq!(error_at(&format!("a /x\na /y {p}"), 2), K::BadPriority(p.into()), "{p}");
    }
    assert_eq!(error_at("a /y c:0", 1), K::BadPriority("0".into()));
}

#[test]
fn unknown_attribute() {
    for attr in ["x", "C", "c++", "e", "", "+", "children"] {
        let kind = error_at(&format!("a /y c:{attr}"), 1);
        let expected = if attr == "+" { K::BadPriority("+".into()) } else { K::UnknownAttribute(attr.into()) };
        assert_eq!(kind, expected, "{attr:?}");
    }
    assert_eq!(error_at("a /y :c", 1), K::UnknownAttribute("".into()));
    assert_eq!(error_at("a /y 10:", 1), K::UnknownAttribute("".into()));
}

#[test]
fn two_depths() {
    assert_eq!(error_at("a /y c:d", 1), K::TwoDepths("c".into(), "d".into()));
    assert_eq!(error_at("a /y d+:5:c+", 1), K::TwoDepths("d+".into(), "c+".into()));
    assert_eq!(error_at("a /y c:c", 1), K::TwoDepths("c".into(), "c".into()));
}

#[test]
fn duplicate_priority() {
    assert_eq!(error_at("a /y 5:6", 1), K::DuplicatePriority("5".into(), "6".into()));
    assert_eq!(error_at("a /y 5:c:5", 1), K::DuplicatePriority("5".into(), "5".into()));
}

#[test]
fn trailing_garbage() {
    assert_eq!(error_at("a /y 5 d+", 1), K::TrailingGarbage("d+".into()));
    assert_eq!(error_at("d /y 5", 1), K::TrailingGarbage("5".into()));
    assert_eq!(error_at("c now", 1), K::TrailingGarbage("now".into()));
    assert_eq!(error_at("l out.txt", 1), K::TrailingGarbage("out.txt".into()));
    assert_eq!(error_at(r#"a "/y"5"#, 1), K::TrailingGarbage("5".into()));
    let long = format!("a /y 5 {}", "g".repeat(500));
    let message = parse(&long, "t").unwrap_err().to_string();
    assert!(message.len() < 200, "garbage is cut short in messages: {message}");
}

#[test]
fn unterminated_quote_and_bad_escape() {
    assert_eq!(error_at(r#"a "/my dir 5"#, 1), K::UnterminatedQuote);
    assert_eq!(error_at("a \"/my dir\\", 1), K::UnterminatedQuote);
    assert_eq!(error_at("d \"/x\\\"", 1), K::UnterminatedQuote);
    assert_eq!(error_at(r#"a "/my\n dir""#, 1), K::BadEscape(r"\n".into()));
}

#[test]
fn line_too_long() {
    let ok = format!("a /{}", "x".repeat(MAX_LINE_LEN - 3));
    assert_eq!(ok.len(), MAX_LINE_LEN);
    // A line at the limit is read (and its path is then too long for an entry).
    assert!(matches!(parse(&ok, "t").unwrap_err().kind, K::BadPath { reason: PathError::TooLong, .. }));
    let comment = format!("#{}", "x".repeat(MAX_LINE_LEN - 1));
    assert_eq!(parse(&format!("{comment}\r\n"), "t").unwrap(), vec![]);
    assert_eq!(error_at(&format!("c\n{comment}x"), 2), K::LineTooLong(MAX_LINE_LEN + 1));
}

#[test]
fn file_too_large_names_the_file_but_no_line() {
    let text = "#\n".repeat(MAX_PROFILE_LEN / 2 + 1);
    let e = parse(&text, "big.hoard").unwrap_err();
    assert_eq!(e, ProfileError { label: "big.hoard".into(), line: None, kind: K::FileTooLarge(text.len()) });
    assert!(e.to_string().starts_with("big.hoard: profile of"), "{e}");
    assert_eq!(parse(&"#\n".repeat(MAX_PROFILE_LEN / 2), "t").unwrap(), vec![]);
}

#[test]
fn the_first_error_wins_and_nothing_is_returned() {
    let e = parse("a /ok\nbad\na relative", "t").unwrap_err();
    assert_eq!(e.line, Some(2));
}

#[test]
fn messages_quote_input_on_one_line() {
    let e = parse("a /x\n\nx\u{1b}[2J", "t").unwrap_err().to_string();
    assert_eq!(e, r#"t:3: unknown command "x\u{1b}[2J" (expected a, d, c, l, or # for a comment)"#);
}

#[test]
fn entries_built_by_hand_are_checked() {
    assert_eq!(HoardEntry::new("/afs//x/", 5, Children, true), Ok(entry("/afs/x", 5, Children, true)));
    assert!(matches!(
        HoardEntry::new("x", 5, Entry, false),
        Err(EntryError::BadPath { reason: PathError::Relative, .. })
    ));
    assert_eq!(HoardEntry::new("/x", 0, Entry, false), Err(EntryError::BadPriority(0)));
    assert_eq!(HoardEntry::new("/x", 1001, Entry, false), Err(EntryError::BadPriority(1001)));
    assert_eq!(HoardEntry::new("/x", 5, Entry, true), Err(EntryError::FutureWithoutDepth));
    assert_eq!(normalize_path("/"), Ok("/".into()));
    assert_eq!(normalize_path(""), Err(PathError::Relative));
}
