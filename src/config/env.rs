//! `${VAR}` / `${VAR:-default}` expansion, applied to every string (keys and values) of the
//! parsed YAML tree, so an expanded secret can never change the file's structure.
//! `$${` writes a literal `${`.

/// Expands one string. `lookup` is the environment (injected so tests need no global state).
/// Returns the names of variables that were unset and had no default.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut missing = Vec::new();
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        if let Some(body) = after.strip_prefix("${") {
            if let Some(end) = body.find('}') {
                let expr = &body[..end];
                let (name, default) = match expr.find(":-") {
                    Some(i) => (&expr[..i], Some(&expr[i + 2..])),
                    None => (expr, None),
                };
                let valid_name =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if valid_name {
                    match (lookup(name), default) {
                        (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
                        (_, Some(d)) => out.push_str(d),
                        (_, None) => missing.push(name.to_owned()),
                    }
                    rest = &body[end + 1..];
                    continue;
                }
            }
        }
        out.push('$');
        rest = &after[1..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_forms() {
        assert_eq!(expand("${KEY}", &env).unwrap(), "sk-1");
        assert_eq!(expand("a-${KEY}-b", &env).unwrap(), "a-sk-1-b");
        assert_eq!(expand("${NOPE:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand("${EMPTY}", &env).unwrap(), "");
        assert_eq!(expand("$${KEY}", &env).unwrap(), "${KEY}");
        assert_eq!(expand("cost $5", &env).unwrap(), "cost $5");
        assert_eq!(
            expand("${NOPE}", &env).unwrap_err(),
            vec!["NOPE".to_string()]
        );
    }
}
