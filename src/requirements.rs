//! `NVIDIA_REQUIRE_*`: the constraint language and its lazy evaluation.
//!
//! One variable holds one expression; all variables must hold. Inside one,
//! space separates alternatives (OR) and comma separates the terms of an
//! alternative (AND). A term is `<key><op><value>` with keys `cuda`, `driver`,
//! `arch` (compute capability, `9.0`) and `brand` (`=`/`!=` only), and the
//! operators `= != < <= > >=`; versions compare numerically per dot-component
//! with trailing `.0` ignored (contract.md §2). Evaluation short-circuits and
//! asks for host facts only when a term needs them: the CUDA version loads
//! the driver root's libcuda, `arch`/`brand` load NVML, and a container whose
//! first alternative holds loads neither.

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    #[error("{variable}=\"{expression}\" is malformed at \"{term}\": {problem}; fix the image's {variable}, or set NVIDIA_DISABLE_REQUIRE=1")]
    Malformed {
        variable: String,
        expression: String,
        term: String,
        problem: &'static str,
    },
    #[error("{variable}=\"{expression}\" is not met: {reason}")]
    NotMet {
        variable: String,
        expression: String,
        reason: String,
    },
    #[error("cannot evaluate {variable}=\"{expression}\": {problem}; set NVIDIA_DISABLE_REQUIRE=1 to skip the check")]
    Unavailable {
        variable: String,
        expression: String,
        problem: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Cuda,
    Driver,
    Arch,
    Brand,
}

impl Key {
    fn parse(text: &str) -> Option<Key> {
        match text {
            "cuda" => Some(Key::Cuda),
            "driver" => Some(Key::Driver),
            "arch" => Some(Key::Arch),
            "brand" => Some(Key::Brand),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Operator {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Operator::Equal => ordering == Ordering::Equal,
            Operator::NotEqual => ordering != Ordering::Equal,
            Operator::Less => ordering == Ordering::Less,
            Operator::LessOrEqual => ordering != Ordering::Greater,
            Operator::Greater => ordering == Ordering::Greater,
            Operator::GreaterOrEqual => ordering != Ordering::Less,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Operator::Equal => "=",
            Operator::NotEqual => "!=",
            Operator::Less => "<",
            Operator::LessOrEqual => "<=",
            Operator::Greater => ">",
            Operator::GreaterOrEqual => ">=",
        }
    }
}

/// One `<key><op><value>` term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub key: Key,
    pub operator: Operator,
    pub value: String,
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match self.key {
            Key::Cuda => "cuda",
            Key::Driver => "driver",
            Key::Arch => "arch",
            Key::Brand => "brand",
        };
        write!(f, "{key}{}{}", self.operator.symbol(), self.value)
    }
}

/// A parsed expression: alternatives (OR) of terms (AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    pub alternatives: Vec<Vec<Term>>,
}

fn parse_term(text: &str) -> Result<Term, &'static str> {
    let split = text
        .find(['=', '!', '<', '>'])
        .ok_or("a term needs an operator (= != < <= > >=)")?;
    let key = Key::parse(&text[..split]).ok_or("the key must be cuda, driver, arch or brand")?;
    let rest = &text[split..];
    let (operator, value) = [
        ("!=", Operator::NotEqual),
        ("<=", Operator::LessOrEqual),
        (">=", Operator::GreaterOrEqual),
        ("=", Operator::Equal),
        ("<", Operator::Less),
        (">", Operator::Greater),
    ]
    .into_iter()
    .find_map(|(symbol, operator)| rest.strip_prefix(symbol).map(|value| (operator, value)))
    .ok_or("the operator must be one of = != < <= > >=")?;
    if value.is_empty() {
        return Err("the term has no value");
    }
    match key {
        Key::Brand => {
            if !matches!(operator, Operator::Equal | Operator::NotEqual) {
                return Err("brand only takes = or !=");
            }
            if !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err("a brand is a word like tesla");
            }
        }
        Key::Cuda | Key::Driver | Key::Arch => {
            if parse_version(value).is_none() {
                return Err("the value must be a version like 12.4");
            }
        }
    }
    Ok(Term {
        key,
        operator,
        value: value.to_string(),
    })
}

/// `12.4.1` -> `[12, 4, 1]`; `None` unless dot-separated decimal numbers.
pub fn parse_version(text: &str) -> Option<Vec<u64>> {
    text.split('.')
        .map(|part| {
            (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse().ok())
                .flatten()
        })
        .collect()
}

/// Numeric per-component comparison; missing components count as 0, so
/// `12.0` equals `12` (trailing `.0` ignored).
pub fn compare_versions(left: &[u64], right: &[u64]) -> Ordering {
    let length = left.len().max(right.len());
    (0..length)
        .map(|i| {
            let a = left.get(i).copied().unwrap_or(0);
            let b = right.get(i).copied().unwrap_or(0);
            a.cmp(&b)
        })
        .find(|ordering| *ordering != Ordering::Equal)
        .unwrap_or(Ordering::Equal)
}

impl Expression {
    /// Parses one variable's expression; `variable` names it in the error.
    pub fn parse(variable: &str, text: &str) -> Result<Expression, RequirementError> {
        let mut alternatives = Vec::new();
        for alternative in text.split_whitespace() {
            let mut terms = Vec::new();
            for term in alternative.split(',') {
                let parsed = parse_term(term).map_err(|problem| RequirementError::Malformed {
                    variable: variable.to_string(),
                    expression: text.to_string(),
                    term: term.to_string(),
                    problem,
                })?;
                terms.push(parsed);
            }
            alternatives.push(terms);
        }
        Ok(Expression { alternatives })
    }
}

/// The host facts a term may need, each asked only when needed. `arch` and
/// `brand` are per GPU (`gpu` = position in the selected GPUs).
pub trait Facts {
    /// `major.minor` CUDA version the driver supports (`12.4`).
    fn cuda_version(&mut self) -> Result<String, String>;
    /// The driver version (`550.54.15`).
    fn driver_version(&mut self) -> Result<String, String>;
    /// Compute capability of the selected GPU `gpu` (`9.0`).
    fn arch(&mut self, gpu: usize) -> Result<String, String>;
    /// Brand name of the selected GPU `gpu` (`tesla`), lowercase.
    fn brand(&mut self, gpu: usize) -> Result<String, String>;
}

/// The first term that failed, with the host's value.
struct Failure {
    term: Term,
    host_value: String,
    gpu: Option<usize>,
}

fn holds(term: &Term, host_value: &str) -> bool {
    match term.key {
        Key::Brand => {
            let equal = host_value.eq_ignore_ascii_case(&term.value);
            (term.operator == Operator::Equal) == equal
        }
        _ => match (parse_version(host_value), parse_version(&term.value)) {
            (Some(host), Some(wanted)) => term.operator.holds(compare_versions(&host, &wanted)),
            _ => false,
        },
    }
}

/// Evaluates one alternative for one GPU (or none); `Ok(None)` = it holds.
fn evaluate_alternative(
    terms: &[Term],
    gpu: Option<usize>,
    facts: &mut dyn Facts,
) -> Result<Option<Failure>, String> {
    for term in terms {
        let host_value = match (term.key, gpu) {
            (Key::Cuda, _) => facts.cuda_version()?,
            (Key::Driver, _) => facts.driver_version()?,
            (Key::Arch, Some(gpu)) => facts.arch(gpu)?,
            (Key::Brand, Some(gpu)) => facts.brand(gpu)?,
            // No GPU selected (`none`): nothing to hold a GPU property against.
            (Key::Arch | Key::Brand, None) => continue,
        };
        if !holds(term, &host_value) {
            return Ok(Some(Failure {
                term: term.clone(),
                host_value,
                gpu,
            }));
        }
    }
    Ok(None)
}

fn explain(failure: &Failure) -> String {
    let term = &failure.term;
    let gpu = failure
        .gpu
        .map(|g| format!("selected GPU {g}"))
        .unwrap_or_default();
    let escape = "or set NVIDIA_DISABLE_REQUIRE=1";
    match term.key {
        Key::Cuda => format!(
            "the driver supports CUDA {}, the image needs {term}: update the driver or use an older image, {escape}",
            failure.host_value
        ),
        Key::Driver => format!(
            "the driver is version {}, the image needs {term}: install a matching driver or use another image, {escape}",
            failure.host_value
        ),
        Key::Arch => format!(
            "{gpu} has compute capability {}, the image needs {term}: run it on a GPU that has it, {escape}",
            failure.host_value
        ),
        Key::Brand => format!(
            "{gpu} is brand {}, the image needs {term}: run it on such a GPU, {escape}",
            failure.host_value
        ),
    }
}

/// Checks every `(variable, expression)`; `gpu_count` selected GPUs. The
/// expression must hold for each selected GPU (arch and brand are per GPU).
pub fn check(
    requirements: &[(String, String)],
    gpu_count: usize,
    facts: &mut dyn Facts,
) -> Result<(), RequirementError> {
    for (variable, text) in requirements {
        let expression = Expression::parse(variable, text)?;
        if expression.alternatives.is_empty() {
            continue;
        }
        let gpus: Vec<Option<usize>> = if gpu_count == 0 {
            vec![None]
        } else {
            (0..gpu_count).map(Some).collect()
        };
        for gpu in gpus {
            let mut first_failure = None;
            let mut satisfied = false;
            for alternative in &expression.alternatives {
                let outcome = evaluate_alternative(alternative, gpu, facts).map_err(|problem| {
                    RequirementError::Unavailable {
                        variable: variable.clone(),
                        expression: text.clone(),
                        problem,
                    }
                })?;
                match outcome {
                    None => {
                        satisfied = true;
                        break;
                    }
                    Some(failure) => {
                        first_failure.get_or_insert(failure);
                    }
                }
            }
            if !satisfied {
                let reason = first_failure.as_ref().map(explain).unwrap_or_default();
                return Err(RequirementError::NotMet {
                    variable: variable.clone(),
                    expression: text.clone(),
                    reason,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Facts from fixed values, counting what was asked.
    #[derive(Default)]
    struct FixedFacts {
        cuda: &'static str,
        driver: &'static str,
        arch: &'static str,
        brand: &'static str,
        cuda_asked: usize,
        gpu_asked: usize,
    }

    impl Facts for FixedFacts {
        fn cuda_version(&mut self) -> Result<String, String> {
            self.cuda_asked += 1;
            Ok(self.cuda.to_string())
        }
        fn driver_version(&mut self) -> Result<String, String> {
            Ok(self.driver.to_string())
        }
        fn arch(&mut self, _: usize) -> Result<String, String> {
            self.gpu_asked += 1;
            Ok(self.arch.to_string())
        }
        fn brand(&mut self, _: usize) -> Result<String, String> {
            self.gpu_asked += 1;
            Ok(self.brand.to_string())
        }
    }

    fn host() -> FixedFacts {
        FixedFacts {
            cuda: "12.4",
            driver: "550.54.15",
            arch: "9.0",
            brand: "tesla",
            ..Default::default()
        }
    }

    fn holds_on_host(expression: &str) -> bool {
        check(
            &[("NVIDIA_REQUIRE_X".into(), expression.into())],
            1,
            &mut host(),
        )
        .is_ok()
    }

    #[test]
    fn every_operator() {
        let table = [
            ("cuda>=12.4", true),
            ("cuda>=12.4.0", true),
            ("cuda>=12.5", false),
            ("cuda>12.3", true),
            ("cuda>12.4", false),
            ("cuda<12.5", true),
            ("cuda<12.4", false),
            ("cuda<=12.4", true),
            ("cuda<=12.3", false),
            ("cuda=12.4", true),
            ("cuda=12.4.0.0", true),
            ("cuda=12", false),
            ("cuda!=12.4", false),
            ("cuda!=11.8", true),
            ("driver>=470", true),
            ("driver<551", true),
            ("driver>=550.54.16", false),
            ("driver=550.54.15", true),
            ("cuda>=12.10", false), // numeric, not lexical: 12.10 > 12.4
            ("arch>=8.0", true),
            ("arch=9.0", true),
            ("arch<9", false),
            ("brand=tesla", true),
            ("brand=TESLA", true),
            ("brand!=tesla", false),
            ("brand=geforce", false),
        ];
        for (expression, expected) in table {
            assert_eq!(holds_on_host(expression), expected, "{expression}");
        }
    }

    #[test]
    fn or_of_ands() {
        assert!(holds_on_host("cuda>=13.0 driver>=550"));
        assert!(!holds_on_host("cuda>=13.0 driver>=551"));
        assert!(holds_on_host("cuda>=12.0,driver>=550"));
        assert!(!holds_on_host("cuda>=12.0,driver>=551"));
        assert!(holds_on_host(
            "  cuda>=13.0   brand=geforce,arch>=8.0 brand=tesla,driver>=550,driver<551 "
        ));
        assert!(holds_on_host(""));
    }

    #[test]
    fn real_cuda_image_strings() {
        // From nvidia/cuda:12.4.1-base-ubuntu22.04.
        let cuda_12_4 = "cuda>=12.4 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471 brand=nvidia,driver>=470,driver<471 brand=nvidiartx,driver>=470,driver<471 brand=geforce,driver>=470,driver<471 brand=geforce,driver>=535,driver<536";
        let mut facts = host();
        assert!(check(
            &[("NVIDIA_REQUIRE_CUDA".into(), cuda_12_4.into())],
            1,
            &mut facts
        )
        .is_ok());
        // Satisfied by the first alternative: NVML never asked.
        assert_eq!(facts.gpu_asked, 0);
        assert_eq!(facts.cuda_asked, 1);

        // A 470 Tesla host: CUDA 11.4, only the brand=tesla alternative holds.
        let mut old = FixedFacts {
            cuda: "11.4",
            driver: "470.223.02",
            arch: "8.0",
            brand: "tesla",
            ..Default::default()
        };
        let cuda_12_1 =
            "cuda>=12.1 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471";
        assert!(check(
            &[("NVIDIA_REQUIRE_CUDA".into(), cuda_12_1.into())],
            1,
            &mut old
        )
        .is_ok());
        assert!(old.gpu_asked > 0);
        old.brand = "geforce";
        let error = check(
            &[("NVIDIA_REQUIRE_CUDA".into(), cuda_12_1.into())],
            1,
            &mut old,
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("the driver supports CUDA 11.4, the image needs cuda>=12.1"),
            "{message}"
        );
        assert!(message.contains("NVIDIA_DISABLE_REQUIRE=1"), "{message}");
    }

    #[test]
    fn all_variables_must_hold() {
        let requirements = [
            ("NVIDIA_REQUIRE_CUDA".to_string(), "cuda>=12.0".to_string()),
            ("NVIDIA_REQUIRE_ARCH".to_string(), "arch>=10.0".to_string()),
        ];
        let error = check(&requirements, 2, &mut host()).unwrap_err();
        assert!(error.to_string().contains("NVIDIA_REQUIRE_ARCH"), "{error}");
        assert!(
            error.to_string().contains("compute capability 9.0"),
            "{error}"
        );
        // No GPU selected: GPU properties are not checked.
        assert!(check(&requirements, 0, &mut host()).is_ok());
    }

    #[test]
    fn bad_syntax() {
        for bad in [
            "cuda",
            "cuda>=",
            "gpu>=1",
            "cuda=>12",
            "cuda>=12.x",
            "brand>=tesla",
            "cuda>=12.4,",
            "cuda>=12.4,,driver>=1",
            "brand=te$la",
            "cuda~12",
        ] {
            let error = Expression::parse("NVIDIA_REQUIRE_CUDA", bad).unwrap_err();
            assert!(matches!(error, RequirementError::Malformed { .. }), "{bad}");
            assert!(error.to_string().contains(bad.trim()), "{error}");
        }
    }

    #[test]
    fn version_compare() {
        let v = |s| parse_version(s).unwrap();
        assert_eq!(compare_versions(&v("12.4"), &v("12.4.0")), Ordering::Equal);
        assert_eq!(compare_versions(&v("12.10"), &v("12.9")), Ordering::Greater);
        assert_eq!(
            compare_versions(&v("550.54.15"), &v("550.100")),
            Ordering::Less
        );
        assert_eq!(parse_version("1..2"), None);
        assert_eq!(parse_version(""), None);
    }
}
