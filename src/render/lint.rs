//! Offline checks of a template (`zkrender check`): what would fail every render whatever
//! the znodes hold, found in the compiled template rather than by a trial render.

use super::*;

// A mistake that no znode value can fix (an unknown function, filter or test, a relative
// znode path in a file without `prefix`, `env()` of a name not in `allow_env`) would make every
// render of the file fail, forever. [`lint`] finds them without ZooKeeper so that `check`, and
// `run` at start and on a config reload, refuse the config instead.
//
// Why the compiled instructions and not a trial render: a render against an empty snapshot
// only runs the branches the placeholders take, so `{% if znode("/mode") == "x" %}{{ a | typo
// }}{% endif %}` would pass. The instructions hold every call, filter and test of every
// branch, macro and block. They come from minijinja's `unstable_machinery` (no semver
// promise): Cargo.toml pins minijinja's minor version, and the unit tests below fail if an
// update changes what the walk sees. Which names are the template's own (`set`, macros,
// loop variables) is minijinja's stable `undeclared_variables`.

/// A mistake found in a template without rendering it (see [`lint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    /// 1-based line in the template.
    pub line: usize,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl fmt::Display for Lint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Every mistake in `spec` that would fail each render whatever the znodes hold: a call of an
/// unknown function, an unknown filter or test, a literal znode path that does not resolve
/// (relative without the file's `prefix`, or malformed) in `znode`, `children`, `exists` or `tree`,
/// and `env("NAME")` with a literal NAME not in `allow_env`. Arguments computed at render
/// time are not checked. A template that does not compile gives none: [`compile_all`]
/// reports its syntax error. Pure: reads no environment variable and no file.
pub fn lint(spec: &TemplateSpec, allow_env: &[String]) -> Vec<Lint> {
    use minijinja::machinery::Instruction;

    let mut env = base_environment();
    if env.add_template_owned("lint", spec.text.clone()).is_err() {
        return Vec::new();
    }
    let Ok(template) = env.get_template("lint") else { return Vec::new() };
    // Names the template reads but never sets: a global (our functions, minijinja's `range`,
    // `dict`, ...) or nothing. A name the template sets itself is never reported.
    let undeclared = template.undeclared_variables(false);
    let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
    let compiled = minijinja::machinery::get_compiled_template(&template);
    let mut probes = Probes { env: &env, known: BTreeMap::new() };
    let mut lints = Vec::new();
    for instructions in std::iter::once(&compiled.instructions).chain(compiled.blocks.values()) {
        for idx in 0..u32::try_from(instructions.len()).unwrap_or(u32::MAX) {
            let line = instructions.get_line(idx).unwrap_or(1);
            let message = match instructions.get(idx) {
                Some(Instruction::CallFunction(name, args)) if undeclared.contains(*name) => {
                    if !globals.contains(name) && *name != "super" {
                        Some(format!("unknown function `{name}`"))
                    } else {
                        let first = args.and_then(|n| literal_first_arg(instructions, idx, n));
                        first.and_then(|arg| check_call(name, arg, spec, allow_env))
                    }
                }
                Some(Instruction::ApplyFilter(name, ..)) if !probes.exists(Probe::Filter, name) => {
                    Some(format!("unknown filter `{name}`"))
                }
                Some(Instruction::PerformTest(name, ..)) if !probes.exists(Probe::Test, name) => {
                    Some(format!("unknown test `{name}`"))
                }
                _ => None,
            };
            if let Some(message) = message
                && !lints.iter().any(|l: &Lint| l.line == line && l.message == message)
            {
                lints.push(Lint { line, message });
            }
        }
    }
    lints.sort_by_key(|l| l.line);
    lints
}

/// The string of a call's first argument when it is a literal. Walks back from the call over
/// straight-line code, counting what each instruction takes from and puts on the stack, to
/// the instruction that pushed the first of the `argc` arguments; anything else (a jump, an
/// instruction not in the table below) gives up, and the argument goes unchecked.
fn literal_first_arg<'i>(
    instructions: &'i minijinja::machinery::Instructions<'_>,
    call: u32,
    argc: u16,
) -> Option<&'i str> {
    use minijinja::machinery::Instruction as I;
    // Values still to walk past, counted from the top of the stack at the call; the first
    // argument is the last of them.
    let mut wanted = usize::from(argc);
    let mut idx = call;
    while wanted > 0 && idx > 0 {
        idx -= 1;
        let instruction = instructions.get(idx)?;
        let (pops, pushes) = match instruction {
            I::LoadConst(_) | I::Lookup(_) => (0, 1),
            I::GetAttr(_) | I::Neg | I::Not => (1, 1),
            I::GetItem
            | I::Add
            | I::Sub
            | I::Mul
            | I::Div
            | I::IntDiv
            | I::Rem
            | I::Pow
            | I::StringConcat
            | I::In
            | I::Eq
            | I::Ne
            | I::Gt
            | I::Gte
            | I::Lt
            | I::Lte => (2, 1),
            I::BuildKwargs(n) | I::BuildMap(n) => (2 * n, 1),
            I::MergeKwargs(n) | I::BuildList(Some(n)) => (*n, 1),
            I::CallFunction(_, Some(n)) | I::CallMethod(_, Some(n)) => (usize::from(*n), 1),
            I::ApplyFilter(_, Some(n), _) | I::PerformTest(_, Some(n), _) => (usize::from(*n), 1),
            _ => return None,
        };
        if wanted == 1 && pushes == 1 {
            return match instruction {
                I::LoadConst(value) => value.as_str(),
                _ => None,
            };
        }
        wanted = wanted - pushes + pops;
    }
    None
}

/// What is wrong with calling our function `name` with the literal first argument `arg`.
fn check_call(name: &str, arg: &str, spec: &TemplateSpec, allow_env: &[String]) -> Option<String> {
    match name {
        "znode" | "children" | "exists" | "tree" => {
            ZnodePath::resolve(spec.prefix.as_ref(), arg).err().map(|err| err.to_string())
        }
        "env" if !allow_env.iter().any(|allowed| allowed == arg) => {
            Some(format!("environment variable {arg} is not readable: list it in this file's allow_env"))
        }
        _ => None,
    }
}

/// A filter or a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Probe {
    Filter,
    Test,
}

/// Whether the environment has a filter or test of a name. minijinja has no public lookup, so
/// a tiny expression applies it to `none`: only a missing one fails with `UnknownFilter` or
/// `UnknownTest` (any other outcome, errors included, means it exists).
struct Probes<'e> {
    env: &'e Environment<'static>,
    known: BTreeMap<(Probe, String), bool>,
}

impl Probes<'_> {
    fn exists(&mut self, probe: Probe, name: &str) -> bool {
        let env = self.env;
        *self.known.entry((probe, name.to_owned())).or_insert_with(|| {
            let (text, missing) = match probe {
                Probe::Filter => (format!("none | {name}"), ErrorKind::UnknownFilter),
                Probe::Test => (format!("none is {name}"), ErrorKind::UnknownTest),
            };
            match env.compile_expression_owned(text) {
                Ok(expr) => !matches!(expr.eval(()), Err(err) if err.kind() == missing),
                // A name the parser took from a template always parses again.
                Err(_) => true,
            }
        })
    }
}
