//! What a compiled template keeps on the heap (vendor/PATCHES.md, minijinja patch 1).
//!
//! A configuration with hundreds of templates keeps every one compiled for as long as it
//! runs, so what each keeps is part of the agent's resident memory at scale. minijinja 2.24
//! reserves room for 256 instructions, 128 line records and 128 span records per template
//! (about 13 KiB) and never gives it back; the vendored copy shrinks them once compiled.
//! This test counts the bytes live after compiling small templates, with a counting global
//! allocator (its own test binary, so nothing else allocates meanwhile).

use zkrender::model::TemplateSpec;
use zkrender::render;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

#[test]
fn a_small_compiled_template_keeps_little_memory() {
    const TEMPLATES: usize = 200;
    // The shape of the benchmark's scale scenario: ten `key = {{ znode('kNN') }}` lines.
    // Each text differs (its first line names the template): templates with the same text
    // share one compiled copy (render::compile_all), which would hide what a copy keeps.
    let text: String = (0..10).map(|k| format!("k{k:02} = {{{{ znode('k{k:02}') }}}}\n")).collect();
    let specs: Vec<TemplateSpec> = (0..TEMPLATES)
        .map(|i| TemplateSpec {
            name: format!("t{i}"),
            path: None,
            text: format!("# t{i}\n{text}"),
            prefix: None,
        })
        .collect();
    let no_env: Vec<String> = Vec::new();

    let before = counting_alloc::live();
    let compiled = render::compile_all(specs.iter().map(|s| (s, no_env.as_slice())));
    let per_template = (counting_alloc::live() - before) / TEMPLATES as isize;
    eprintln!("each compiled template keeps {per_template} bytes on the heap");
    assert_eq!(compiled.iter().filter(|c| c.is_ok()).count(), TEMPLATES);
    // The text (about 250 bytes), its name and key, the instructions of ten lines (about
    // 60 × 32 bytes) and their line and span records stay: well under 6 KiB. Unshrunk, the
    // reserved capacity alone is over 13 KiB.
    assert!(per_template < 6 * 1024, "each compiled template keeps {per_template} bytes on the heap");
    drop(compiled);
}
