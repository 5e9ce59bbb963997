//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1e3`) as whole
//! milli-units, so that sums are exact: CPU in millicores, memory in
//! thousandths of a byte (compared only with each other).

/// The value of `text` in milli-units, or `None` when it is not a quantity.
pub fn milli(text: &str) -> Option<i128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    // `1e3` is an exponent; a lone `E` is the exa suffix.
    let (exponent, suffix) = match suffix
        .strip_prefix(['e', 'E'])
        .filter(|rest| !rest.is_empty())
    {
        Some(exponent) => (exponent.parse::<i32>().ok()?, ""),
        None => (0, suffix),
    };
    // Scale as (multiplier, power of ten), applied to the digits exactly.
    let (multiplier, power): (i128, i32) = match suffix {
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "" => (1, 0),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        _ => return None,
    };
    let negative = number.starts_with('-');
    let number = number.trim_start_matches(['+', '-']);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    // value = digits × 10^(power + exponent − fraction digits) × multiplier,
    // in milli-units: one more factor of 10^3. Round up what is below a
    // milli-unit, as Kubernetes does for CPU.
    let scale = power + exponent + 3 - i32::try_from(fraction.len()).ok()?;
    let value = if scale >= 0 {
        digits
            .checked_mul(10_i128.checked_pow(u32::try_from(scale).ok()?)?)?
            .checked_mul(multiplier)?
    } else {
        let divisor = 10_i128.checked_pow(u32::try_from(-scale).ok()?)?;
        (digits.checked_mul(multiplier)? + divisor - 1) / divisor
    };
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::milli;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("1"), Some(1_000));
        assert_eq!(milli("1.5"), Some(1_500));
        assert_eq!(milli("0.1"), Some(100));
        assert_eq!(milli("128Mi"), Some(128 * 1024 * 1024 * 1_000));
        assert_eq!(milli("1Gi"), Some((1 << 30) * 1_000));
        assert_eq!(milli("2k"), Some(2_000_000));
        assert_eq!(milli("1e3"), Some(1_000_000));
        assert_eq!(milli("1n"), Some(1));
        assert_eq!(milli("110"), Some(110_000));
        assert_eq!(milli("1E"), Some(10_i128.pow(21)));
        assert_eq!(milli("12x"), None);
        assert_eq!(milli(""), None);
    }
}
