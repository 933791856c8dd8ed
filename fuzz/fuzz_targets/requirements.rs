//! `NVIDIA_REQUIRE_*` expressions: parsing any text never panics, a parsed
//! expression prints back to terms that parse to the same thing, and
//! evaluation against fixed host facts never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvidia_container_runtime::requirements::{
    check, compare_versions, parse_version, Expression, Facts,
};

struct Host;

impl Facts for Host {
    fn cuda_version(&mut self) -> Result<String, String> {
        Ok("12.4".into())
    }
    fn driver_version(&mut self) -> Result<String, String> {
        Ok("550.54.15".into())
    }
    fn arch(&mut self, gpu: usize) -> Result<String, String> {
        match gpu {
            0 => Ok("9.0".into()),
            _ => Err("no NVML".into()),
        }
    }
    fn brand(&mut self, _gpu: usize) -> Result<String, String> {
        Ok("tesla".into())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(expression) = Expression::parse("NVIDIA_REQUIRE_FUZZ", text) {
        let printed: Vec<String> = expression
            .alternatives
            .iter()
            .map(|terms| {
                terms
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        let again = Expression::parse("NVIDIA_REQUIRE_FUZZ", &printed.join(" "))
            .expect("a printed expression parses");
        assert_eq!(again, expression);
    }
    for gpus in [0, 1, 2] {
        let _ = check(
            &[("NVIDIA_REQUIRE_FUZZ".to_string(), text.to_string())],
            gpus,
            &mut Host,
        );
    }
    // Version comparison is a total order on what parse_version accepts.
    let mut words = text.split_whitespace();
    if let (Some(a), Some(b)) = (words.next(), words.next()) {
        if let (Some(a), Some(b)) = (parse_version(a), parse_version(b)) {
            assert_eq!(compare_versions(&a, &b), compare_versions(&b, &a).reverse());
        }
    }
});
