//! Energy: interval consumption (VEE) in batches, and the balance sums on the way.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::consumption::{self, Channel, Job};
use crate::vee::VeeConfig;

use super::*;

/// (serial, packed OBIS, 24 typical values by local hour).
pub(super) type ProfileRow = (Vec<u8>, u64, Vec<f64>);

/// Interval consumption (VEE) from RowBinary readings, or (`native_input`) Native
/// blocks (`meter, obis, ts Int64, value`, ordered by meter, obis, ts) to
/// `consumption` rows, RowBinary or (`native`) one Native block; without the GIL.
/// `channels`: (obis, scale, unit, max_rate per hour in register units).
/// Returns (rows, stats).
#[pyfunction]
#[pyo3(signature = (
    readings, *, channels, unlimited, keep_from, keep_to, now, computed_at_ms, profiles = None, states = None, native = false,
    native_input = false, sums = None, meter_nodes = None, interval = 3600, measured_gap = 3600, max_estimate_span = 5_356_800,
    local_offset = 18_000, future_tolerance = 600
))]
#[allow(clippy::too_many_arguments)]
pub(super) fn consumption_rows<'py>(
    py: Python<'py>,
    readings: &[u8],
    channels: Vec<(String, f64, String, f64)>,
    unlimited: Vec<Vec<u8>>,
    keep_from: i64,
    keep_to: i64,
    now: i64,
    computed_at_ms: i64,
    profiles: Option<Vec<ProfileRow>>,
    states: Option<Vec<String>>,
    native: bool,
    native_input: bool,
    sums: Option<PyRefMut<'py, NodeSums>>,
    meter_nodes: Option<&[u8]>,
    interval: i64,
    measured_gap: i64,
    max_estimate_span: i64,
    local_offset: i64,
    future_tolerance: i64,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyDict>)> {
    let mut chans = Vec::with_capacity(channels.len());
    for (code, scale, unit, max_rate) in channels {
        let obis = obis_code(py, &code)?;
        chans.push(Channel { obis: obis.to_u64(), scale, unit, max_rate });
    }
    let state_codes = obis_codes(py, &states.unwrap_or_default())?;
    let profiles = profiles.unwrap_or_default();
    let mut by_series = std::collections::HashMap::with_capacity(profiles.len());
    for (meter, obis, hours) in profiles {
        let Ok(p) = <[f64; 24]>::try_from(hours.as_slice()) else {
            return Err(local_error(py, "profile", format!("{} values, not 24", hours.len())));
        };
        by_series.insert((meter, obis), p);
    }
    let job = Job {
        vee: VeeConfig { interval, measured_gap, max_estimate_span, local_offset, now, future_tolerance },
        channels: chans,
        unlimited: unlimited.into_iter().collect(),
        profiles: by_series,
        states: state_codes,
        native,
        native_input,
        keep_from,
        keep_to,
        computed_at_ms,
    };
    let (rows, st) = match (sums, meter_nodes) {
        (None, None) => codec(py, guarded(py, true, || consumption::run(&job, readings))?)?,
        (Some(mut sums), Some(placed)) => {
            let sums = &mut sums.inner;
            codec(
                py,
                guarded(py, true, || {
                    let placed = consumption::MeterNodes::read(placed)?;
                    consumption::run_summing(&job, readings, Some((sums, &placed)))
                })?,
            )?
        }
        _ => return Err(local_error(py, "node sums", "sums and meter_nodes go together")),
    };
    let d = PyDict::new(py);
    d.set_item("readings", st.readings)?;
    d.set_item("series", st.series)?;
    d.set_item("rows", st.rows)?;
    d.set_item("future", st.vee.future)?;
    d.set_item("not_finite", st.vee.not_finite)?;
    d.set_item("duplicates", st.vee.duplicates)?;
    d.set_item("conflicts", st.vee.conflicts)?;
    Ok((PyBytes::new(py, &rows), d))
}

/// Meters of the readings (as `consumption_rows` takes them) with a gap in one of the
/// `channels` registers (OBIS codes) that an estimate spreads: the ones whose typical
/// day is worth fetching. Without the GIL.
#[pyfunction]
#[pyo3(signature = (readings, *, channels, native_input = false, measured_gap = 3600, max_estimate_span = 5_356_800))]
pub(super) fn gappy_meters<'py>(
    py: Python<'py>,
    readings: &[u8],
    channels: Vec<String>,
    native_input: bool,
    measured_gap: i64,
    max_estimate_span: i64,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let codes = obis_codes(py, &channels)?;
    let found = guarded(py, true, || {
        consumption::gappy_meters(readings, native_input, &codes, measured_gap, max_estimate_span)
    })?;
    Ok(serials(py, &codec(py, found)?))
}

/// Meters of the readings with a series of the `channels` registers whose first
/// sample comes after `start`. Without the GIL.
#[pyfunction]
#[pyo3(signature = (readings, *, channels, start, native_input = false))]
pub(super) fn late_starters<'py>(
    py: Python<'py>,
    readings: &[u8],
    channels: Vec<String>,
    start: i64,
    native_input: bool,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let codes = obis_codes(py, &channels)?;
    let found = guarded(py, true, || consumption::late_starters(readings, native_input, &codes, start))?;
    Ok(serials(py, &codec(py, found)?))
}

/// The Native readings with the `earlier` ones put in front of their series, as one
/// Native block of a series a row. Without the GIL.
#[pyfunction]
pub(super) fn with_earlier<'py>(py: Python<'py>, readings: &[u8], earlier: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let out = guarded(py, true, || consumption::with_earlier(readings, earlier))?;
    Ok(PyBytes::new(py, &codec(py, out)?))
}

/// Balance sums gathered by `consumption_rows`: per network node (in the order given),
/// side (0 the consumers below it, 1 its balance meters) and hour of the window from
/// `start`, the consumption of the `obis` registers and how many of its intervals
/// were measured.
#[pyclass(module = "headend._core")]
pub struct NodeSums {
    pub(super) inner: consumption::NodeSums,
}

#[pymethods]
impl NodeSums {
    /// `prefer`: (fallback, preferred) OBIS pairs; a meter's fallback register counts
    /// only where it has no preferred one (gas volume, corrected volume).
    #[new]
    #[pyo3(signature = (nodes, start, hours, obis, prefer = None))]
    fn new(
        py: Python<'_>,
        nodes: Vec<String>,
        start: i64,
        hours: usize,
        obis: Vec<String>,
        prefer: Option<Vec<(String, String)>>,
    ) -> PyResult<Self> {
        let codes = obis_codes(py, &obis)?;
        let (fallback, preferred): (Vec<String>, Vec<String>) = prefer.unwrap_or_default().into_iter().unzip();
        let pairs = obis_codes(py, &fallback)?.into_iter().zip(obis_codes(py, &preferred)?).collect();
        let nodes = nodes.into_iter().map(String::into_bytes).collect();
        Ok(NodeSums { inner: codec(py, consumption::NodeSums::new(nodes, start, hours, codes, pairs))? })
    }

    /// (values, measured, preferred): little-endian float64, uint32 and uint32,
    /// `[node][side][hour]`; preferred counts the intervals of preferred registers.
    fn arrays<'py>(&self, py: Python<'py>) -> (Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>) {
        let v: Vec<u8> = self.inner.value.iter().flat_map(|x| x.to_le_bytes()).collect();
        let m: Vec<u8> = self.inner.measured.iter().flat_map(|x| x.to_le_bytes()).collect();
        let p: Vec<u8> = self.inner.preferred.iter().flat_map(|x| x.to_le_bytes()).collect();
        (PyBytes::new(py, &v), PyBytes::new(py, &m), PyBytes::new(py, &p))
    }

    /// Series of the registers whose meter has no network node among `nodes`.
    #[getter]
    fn unplaced(&self) -> u64 {
        self.inner.unplaced
    }
}
