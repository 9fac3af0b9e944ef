//! Display stretch for cutout thumbnails: IRAF's zscale limits (Tody 1986, as in
//! astropy's `ZScaleInterval`) then an asinh stretch (Lupton, Gunn & Szalay 1999).

/// zscale limits `(z1, z2)` of `data`: a line is fitted to the sorted sample
/// (`n_samples` evenly spaced finite values) with iterative 2.5σ rejection, and the
/// limits are the median ∓ (slope / `contrast`) over half the sample. Falls back to
/// the sample's min and max when too many points are rejected. `None` when no value
/// is finite.
pub fn zscale(data: &[f32], n_samples: usize, contrast: f64) -> Option<(f64, f64)> {
    let finite: Vec<f64> = data
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| f64::from(v))
        .collect();
    if finite.is_empty() {
        return None;
    }
    let step = (finite.len() / n_samples.max(1)).max(1);
    let mut s: Vec<f64> = finite.iter().step_by(step).copied().collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let (lo, hi) = (s[0], s[n - 1]);
    if n < 5 {
        return Some((lo, hi));
    }
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    };
    let min_pix = (n / 2).max(5);
    let mut keep = vec![true; n];
    let mut slope = 0.0;
    for _ in 0..5 {
        let pts: Vec<(f64, f64)> = (0..n)
            .filter(|&i| keep[i])
            .map(|i| (i as f64, s[i]))
            .collect();
        if pts.len() < min_pix {
            return Some((lo, hi));
        }
        let m = pts.len() as f64;
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
        let (mx, my) = (sx / m, sy / m);
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        let intercept = my - slope * mx;
        let resid: Vec<f64> = pts
            .iter()
            .map(|p| p.1 - (intercept + slope * p.0))
            .collect();
        let sigma = (resid.iter().map(|r| r * r).sum::<f64>() / m).sqrt();
        let mut changed = false;
        for i in 0..n {
            let r = s[i] - (intercept + slope * i as f64);
            let k = r.abs() <= 2.5 * sigma;
            if keep[i] && !k {
                keep[i] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let slope = slope / contrast;
    let centre = (n as f64 - 1.0) / 2.0;
    let z1 = (median - centre * slope).max(lo);
    let z2 = (median + centre * slope).min(hi);
    Some(if z2 > z1 { (z1, z2) } else { (lo, hi) })
}

/// Grey levels 0–255 of `data` between `z1` and `z2`, asinh-stretched with softening
/// `beta` (in units of the range: small values are linear, large ones logarithmic).
/// Non-finite pixels are black.
pub fn asinh_grey(data: &[f32], (z1, z2): (f64, f64), beta: f64) -> Vec<u8> {
    let range = (z2 - z1).max(f64::MIN_POSITIVE);
    let norm = (1.0 / beta).asinh();
    data.iter()
        .map(|&v| {
            if !v.is_finite() {
                return 0;
            }
            let t = ((f64::from(v) - z1) / range).clamp(0.0, 1.0);
            ((t / beta).asinh() / norm * 255.0).round() as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zscale_brackets_the_noise_and_ignores_a_bright_star() {
        // Uniform values in [-25, 25] plus a few very bright pixels: the limits are
        // the median ± (range / contrast) / 2 = ±100, clipped to the data's minimum
        // below and far below the star above.
        let mut d: Vec<f32> = (0..900)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.5)
            .collect();
        for v in d.iter_mut().take(10) {
            *v = 1e5;
        }
        let (z1, z2) = zscale(&d, 600, 0.25).unwrap();
        assert!((z1 + 25.0).abs() < 1e-9, "{z1}");
        assert!((z2 - 100.0).abs() < 10.0, "{z2}");
        assert!(zscale(&[f32::NAN], 10, 0.25).is_none());
        let g = asinh_grey(
            &[-100.0, z1 as f32, z2 as f32, 1e5, f32::NAN],
            (z1, z2),
            0.1,
        );
        assert_eq!(g, vec![0, 0, 255, 255, 0]);
        let mid = asinh_grey(&[((z1 + z2) / 2.0) as f32], (z1, z2), 0.1)[0];
        assert!(mid > 128, "asinh lifts the middle: {mid}");
    }
}
