//! What a template function call without keyword arguments allocates for them
//! (vendor/PATCHES.md, minijinja patch 3): nothing. `znode()`, `children()`, `env()` and
//! `tree()` take keyword arguments (`default=`, `encoding=`) that most calls do not give, and a render
//! of 1,000 keys calls them 1,000 times. Counted with a counting global allocator (its own test
//! binary, so nothing else allocates meanwhile).

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

/// A function that takes keyword arguments (`Kwargs`, as `znode()` does for
/// `default=` and `encoding=`) but is called without any allocates nothing for them: the
/// allocations of 1,000 such calls are those of 1,000 calls to the same function without the
/// `Kwargs` parameter.
#[test]
fn a_call_without_keyword_arguments_allocates_nothing_for_them() {
    use minijinja::Environment;
    use minijinja::value::Kwargs;

    const CALLS: usize = 1000;
    let mut env = Environment::new();
    env.add_function("plain", |x: i64| x);
    env.add_function("with_kwargs", |x: i64, kwargs: Kwargs| {
        let offset = if kwargs.has("offset") { kwargs.get::<i64>("offset")? } else { 0 };
        kwargs.assert_all_used()?;
        Ok::<_, minijinja::Error>(x + offset)
    });
    let allocations = |function: &str| {
        let source = format!("{{% for i in range({CALLS}) %}}{{{{ {function}(i) }}}}{{% endfor %}}");
        let template = env.template_from_str(&source).unwrap();
        template.render(()).unwrap(); // warm-up: the first render may fill caches
        let before = counting_alloc::allocations();
        let out = template.render(()).unwrap();
        let made = counting_alloc::allocations() - before;
        assert!(out.starts_with("0123"), "{out}");
        made
    };
    let plain = allocations("plain");
    let with_kwargs = allocations("with_kwargs");
    eprintln!("{CALLS} calls: {plain} allocations without a Kwargs parameter, {with_kwargs} with one");
    // A render's own allocations (output growth, frames) may differ by a few; one per call
    // would be 1,000 more.
    assert!(
        with_kwargs <= plain + 10,
        "{CALLS} calls without keyword arguments made {with_kwargs} allocations against {plain} for a function without the parameter"
    );
    assert_eq!(
        env.render_str("{{ with_kwargs(1, offset=2) }}", ()).unwrap(),
        "3",
        "keyword arguments still arrive"
    );
}
