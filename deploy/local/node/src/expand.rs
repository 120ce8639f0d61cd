//! Kubernetes `$(VAR)` expansion, as the kubelet applies it to `command`, `args` and `env` values
//! (`k8s.io/kubernetes/third_party/forked/golang/expansion`):
//! - `$(NAME)` becomes the value of `NAME` if it is defined, and stays `$(NAME)` otherwise;
//! - `$$` becomes `$` (so `$$(NAME)` is the literal `$(NAME)`);
//! - any other `$` is kept as it is, and so is an unterminated `$(`.

/// Expands `input` with `lookup` (returning `None` for undefined names).
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            // How many bytes after the `$` this expression consumed.
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(value) => out.push_str(value),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                // Not an expression: keep the `$`; the next character is copied as usual.
                _ => {
                    out.push('$');
                    0
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.push_str(&input[checkpoint.min(input.len())..]);
    out
}

/// Expands with a list of `(name, value)` pairs; later definitions win, as in a map built in order.
pub fn expand_with(input: &str, vars: &[(String, String)]) -> String {
    expand(input, |name| vars.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, String)> {
        [("VAR_A", "A"), ("VAR_B", "B"), ("VAR_EMPTY", ""), ("VAR_REF", "$(VAR_A)")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn x(input: &str) -> String {
        expand_with(input, &vars())
    }

    // Cases from the upstream expansion tests.
    #[test]
    fn upstream_cases() {
        assert_eq!(x("$(VAR_A)"), "A");
        assert_eq!(x("___$(VAR_B)___"), "___B___");
        assert_eq!(x("$(VAR_A)-$(VAR_A)"), "A-A");
        assert_eq!(x("f000-$$VAR_A"), "f000-$VAR_A");
        assert_eq!(x("foo\\$(VAR_A)bar"), "foo\\Abar");
        assert_eq!(x("$(VAR_A)$(VAR_B)"), "AB");
        assert_eq!(x("$(VAR_EMPTY)"), "");
        assert_eq!(x("$(VAR_REF)"), "$(VAR_A)");
        assert_eq!(x("$(VAR_DNE)"), "$(VAR_DNE)");
        assert_eq!(x("$$(VAR_A)"), "$(VAR_A)");
        assert_eq!(x("$$$(VAR_A)"), "$A");
        assert_eq!(x("$$$$(VAR_A)"), "$$(VAR_A)");
        assert_eq!(x("$(VAR_A"), "$(VAR_A");
        assert_eq!(x("$$(VAR_A"), "$(VAR_A");
        assert_eq!(x("$VAR_A"), "$VAR_A");
        assert_eq!(x("$"), "$");
        assert_eq!(x("$$"), "$");
        assert_eq!(x("foo$"), "foo$");
        assert_eq!(x("$()"), "$()");
        assert_eq!(x("$(VAR_A)$"), "A$");
        assert_eq!(x("()"), "()");
        assert_eq!(x("$()()"), "$()()");
        assert_eq!(x(""), "");
        assert_eq!(x("no vars"), "no vars");
    }

    #[test]
    fn non_ascii_after_dollar_is_kept() {
        assert_eq!(x("$é$(VAR_A)ü"), "$éAü");
    }

    #[test]
    fn later_definitions_win() {
        let vars = vec![("A".to_string(), "1".to_string()), ("A".to_string(), "2".to_string())];
        assert_eq!(expand_with("$(A)", &vars), "2");
    }
}
