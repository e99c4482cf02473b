//! One measured figure, printed for people or as a JSON line.

use std::time::Duration;

/// A result: what was measured, its value, and the floor measured beside it.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    scenario: &'static str,
    metric: &'static str,
    runtime: &'static str,
    workers: usize,
    value: f64,
    unit: &'static str,
    floor: Option<f64>,
}

impl Report {
    pub(crate) fn new(
        scenario: &'static str,
        metric: &'static str,
        runtime: &'static str,
        workers: usize,
    ) -> Self {
        Self {
            scenario,
            metric,
            runtime,
            workers,
            value: 0.0,
            unit: "",
            floor: None,
        }
    }

    pub(crate) fn value(mut self, value: f64, unit: &'static str) -> Self {
        self.value = value;
        self.unit = unit;
        self
    }

    pub(crate) fn floor(mut self, floor: f64) -> Self {
        self.floor = Some(floor);
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.floor.filter(|f| *f > 0.0).map(|f| self.value / f)
    }

    /// `{"scenario":..,"metric":..,"runtime":..,"workers":..,"value":..,"unit":..,"floor":..,"ratio":..}`
    pub(crate) fn json(&self) -> String {
        let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        format!(
            "{{\"scenario\":\"{}\",\"metric\":\"{}\",\"runtime\":\"{}\",\"workers\":{},\"value\":{},\"unit\":\"{}\",\"floor\":{},\"ratio\":{}}}",
            self.scenario,
            self.metric,
            self.runtime,
            self.workers,
            num(Some(self.value)),
            self.unit,
            num(self.floor),
            num(self.ratio()),
        )
    }

    /// One aligned line for people.
    pub(crate) fn line(&self) -> String {
        let floor = match (self.floor, self.ratio()) {
            (Some(f), Some(r)) => format!("floor {:>12} {:<8} ratio {r:.3}", fmt(f), self.unit),
            _ => String::new(),
        };
        format!(
            "{:<11} {:<10} {:<9} {:>2} workers  {:>12} {:<8} {floor}",
            self.scenario,
            self.metric,
            self.runtime,
            self.workers,
            fmt(self.value),
            self.unit
        )
    }
}

fn fmt(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The `q` quantile (0 to 1) of `times`, which it sorts.
pub(crate) fn percentile(times: &mut [Duration], q: f64) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    times.sort_unstable();
    let i = ((times.len() - 1) as f64 * q).round() as usize;
    times[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_the_floor_and_the_ratio() {
        let r = Report::new("throughput", "rate", "tokio", 2)
            .value(500.0, "tasks/s")
            .floor(1000.0);
        assert_eq!(
            r.json(),
            "{\"scenario\":\"throughput\",\"metric\":\"rate\",\"runtime\":\"tokio\",\"workers\":2,\"value\":500.000,\"unit\":\"tasks/s\",\"floor\":1000.000,\"ratio\":0.500}"
        );
        let no_floor = Report::new("soak", "rate", "smol", 1).value(3.0, "tasks/s");
        assert!(no_floor.json().ends_with("\"floor\":null,\"ratio\":null}"));
    }

    #[test]
    fn percentiles_pick_from_the_sorted_times() {
        let mut t: Vec<_> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut t, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&mut t, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&mut t, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&mut [], 0.5), Duration::ZERO);
    }
}
