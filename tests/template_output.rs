//! Printing a value and `~` write what they wrote before the fast paths of vendor/PATCHES.md
//! (minijinja patch 2): the value's `Display`, for every kind of value, on both sides of the
//! fast paths (strings and integers) and of the 64-byte stack buffer of `~`.

use minijinja::value::Value;
use minijinja::{Environment, context};

fn values() -> Vec<(&'static str, Value)> {
    let long = "x".repeat(64);
    vec![
        ("zero", Value::from(0)),
        ("small", Value::from(7)),
        ("negative", Value::from(-7)),
        ("i64_min", Value::from(i64::MIN)),
        ("i64_max", Value::from(i64::MAX)),
        ("u64_max", Value::from(u64::MAX)),
        ("i128", Value::from(-170_141_183_460_469_231_731_687_303_715_884_105_728_i128)),
        ("u128", Value::from(u128::MAX)),
        ("float", Value::from(1.5)),
        ("whole_float", Value::from(2.0)),
        ("true", Value::from(true)),
        ("none", Value::from(())),
        ("empty", Value::from("")),
        ("word", Value::from("word")),
        ("unicode", Value::from("é漢字🙂")),
        ("at_small_str_cap", Value::from("0123456789012345678901")),
        ("past_small_str_cap", Value::from("01234567890123456789012")),
        ("sixty_three", Value::from(&long[..63])),
        ("sixty_four", Value::from(long.as_str())),
        ("safe", Value::from_safe_string("<b>".to_owned())),
        ("bytes", Value::from_bytes(b"raw".to_vec())),
        ("seq", Value::from(vec![Value::from(1), Value::from("a")])),
        ("map", Value::from_iter([("k", 1)])),
    ]
}

#[test]
fn a_printed_value_is_its_display() {
    let env = Environment::new();
    for (name, value) in values() {
        let printed = env.render_str("{{ v }}", context! { v => value.clone() }).unwrap();
        assert_eq!(printed, value.to_string(), "{name}");
    }
}

#[test]
fn concatenation_is_both_displays_in_a_row() {
    let env = Environment::new();
    for (a_name, a) in values() {
        for (b_name, b) in values() {
            let joined = env.render_str("{{ a ~ b }}", context! { a => a.clone(), b => b.clone() }).unwrap();
            assert_eq!(joined, format!("{a}{b}"), "{a_name} ~ {b_name}");
        }
    }
    // Past the stack buffer by one byte, and a chain that crosses it.
    let out = env.render_str("{{ 'x' * 64 ~ 5 }}|{{ 'ab' ~ 1 ~ 'c' * 70 ~ -2 }}", context! {}).unwrap();
    assert_eq!(out, format!("{}5|ab1{}-2", "x".repeat(64), "c".repeat(70)));
}
