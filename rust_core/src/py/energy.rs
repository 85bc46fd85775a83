//! Energy: interval consumption (VEE) in batches, and the balance sums on the way.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::consumption::{self, Channel, Job};
use crate::vee::VeeConfig;

use super::*;

/// (serial, packed OBIS, 24 typical values by local hour).
pub(super) type ProfileRow = (Vec<u8>, u64, Vec<f64>);

/// How interval consumption is derived (VEE), set once: the registers (`channels`:
/// (obis, scale, unit, max_rate per hour in register units)), the supply-switch
/// registers (`states`), the meters with no rate limit (`unlimited`), the formats
/// (`native`: the rows as one Native block; `native_input`: the readings are Native
/// blocks) and the VEE settings. `rows` then derives a batch of readings.
#[pyclass(module = "headend._core", frozen)]
pub struct ConsumptionJob {
    base: Job,
}

#[pymethods]
impl ConsumptionJob {
    #[new]
    #[pyo3(signature = (
        channels, *, states = None, unlimited = None, native = false, native_input = false, interval = 3600,
        measured_gap = 3600, max_estimate_span = 5_356_800, local_offset = 18_000, future_tolerance = 600
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        channels: Vec<(String, f64, String, f64)>,
        states: Option<Vec<String>>,
        unlimited: Option<Vec<Vec<u8>>>,
        native: bool,
        native_input: bool,
        interval: i64,
        measured_gap: i64,
        max_estimate_span: i64,
        local_offset: i64,
        future_tolerance: i64,
    ) -> PyResult<Self> {
        let mut chans = Vec::with_capacity(channels.len());
        for (code, scale, unit, max_rate) in channels {
            let obis = obis_code(py, &code)?;
            chans.push(Channel { obis: obis.to_u64(), scale, unit, max_rate });
        }
        Ok(ConsumptionJob {
            base: Job {
                vee: VeeConfig { interval, measured_gap, max_estimate_span, local_offset, now: 0, future_tolerance },
                channels: chans,
                unlimited: unlimited.unwrap_or_default().into_iter().collect(),
                profiles: Default::default(),
                states: obis_codes(py, &states.unwrap_or_default())?,
                native,
                native_input,
                keep_from: 0,
                keep_to: 0,
                computed_at_ms: 0,
            },
        })
    }

    /// `consumption` rows from `readings` (a `ReadingSlice`, or bytes: RowBinary, or
    /// Native blocks with `native_input`, ordered by meter, obis, ts), keeping
    /// intervals that start in [keep_from, keep_to); samples later than `now` (plus the
    /// tolerance) are dropped; rows are versioned `computed_at_ms`. `profiles`:
    /// (serial, packed OBIS, 24 typical values by local hour) by which gaps are spread;
    /// `sums` with `meter_nodes` (a Native block of `serial String, node_id String,
    /// balance UInt8`): the kept intervals of its registers are added to their meters'
    /// nodes. Returns (rows, stats); without the GIL.
    #[pyo3(signature = (readings, *, keep_from, keep_to, now, computed_at_ms, profiles = None, sums = None, meter_nodes = None))]
    #[allow(clippy::too_many_arguments)]
    fn rows<'py>(
        &self,
        py: Python<'py>,
        readings: Readings<'py>,
        keep_from: i64,
        keep_to: i64,
        now: i64,
        computed_at_ms: i64,
        profiles: Option<Vec<ProfileRow>>,
        sums: Option<PyRefMut<'py, NodeSums>>,
        meter_nodes: Option<&[u8]>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyDict>)> {
        let profiles = profiles.unwrap_or_default();
        let mut by_series = std::collections::HashMap::with_capacity(profiles.len());
        for (meter, obis, hours) in profiles {
            let Ok(p) = <[f64; 24]>::try_from(hours.as_slice()) else {
                return Err(local_error(py, "profile", format!("{} values, not 24", hours.len())));
            };
            by_series.insert((meter, obis), p);
        }
        let job = Job {
            vee: VeeConfig { now, ..self.base.vee.clone() },
            profiles: by_series,
            keep_from,
            keep_to,
            computed_at_ms,
            ..self.base.clone()
        };
        let parsed;
        let slice = match &readings {
            Readings::Slice(s) => &s.inner,
            Readings::Bytes(b) => {
                let data = b.as_bytes();
                let native = job.native_input;
                parsed = codec(py, guarded(py, true, || consumption::Slice::parse(data, native))?)?;
                &parsed
            }
        };
        let (rows, st) = match (sums, meter_nodes) {
            (None, None) => codec(py, guarded(py, true, || consumption::run_summing(&job, slice, None))?)?,
            (Some(mut sums), Some(placed)) => {
                let sums = &mut sums.inner;
                codec(
                    py,
                    guarded(py, true, || {
                        let placed = consumption::MeterNodes::read(placed)?;
                        consumption::run_summing(&job, slice, Some((sums, &placed)))
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
}

/// A slice of meters' readings (Native blocks ordered by meter, obis: a reading a row,
/// or a series a row), parsed once without the GIL: it names the meters that start
/// after a window's start, end before its end, or have gaps, takes the samples on
/// either side of a narrow window in, and is what `ConsumptionJob.rows` derives.
#[pyclass(module = "headend._core")]
pub struct ReadingSlice {
    inner: consumption::Slice,
}

#[pymethods]
impl ReadingSlice {
    #[new]
    #[pyo3(signature = (readings, *, native_input = true))]
    fn new(py: Python<'_>, readings: &[u8], native_input: bool) -> PyResult<Self> {
        let inner = codec(py, guarded(py, true, || consumption::Slice::parse(readings, native_input))?)?;
        Ok(ReadingSlice { inner })
    }

    /// Readings in the slice.
    #[getter]
    fn readings(&self) -> usize {
        self.inner.readings()
    }

    /// Series (a meter's register) in the slice.
    #[getter]
    fn series(&self) -> usize {
        self.inner.series()
    }

    /// Meters with a series of the `channels` registers (OBIS codes) that has a gap an
    /// estimate spreads (two samples more than `measured_gap` and at most
    /// `max_estimate_span` apart): the ones whose typical day is worth fetching.
    #[pyo3(signature = (*, channels, measured_gap = 3600, max_estimate_span = 5_356_800))]
    fn gappy_meters<'py>(
        &self,
        py: Python<'py>,
        channels: Vec<String>,
        measured_gap: i64,
        max_estimate_span: i64,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let codes = obis_codes(py, &channels)?;
        Ok(serials(py, &self.inner.gappy_meters(&codes, measured_gap, max_estimate_span)))
    }

    /// Meters with a series of the `channels` registers whose first sample comes after
    /// `start`.
    #[pyo3(signature = (*, channels, start))]
    fn late_starters<'py>(
        &self,
        py: Python<'py>,
        channels: Vec<String>,
        start: i64,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let codes = obis_codes(py, &channels)?;
        Ok(serials(py, &self.inner.late_starters(&codes, start)))
    }

    /// Meters with a series of the `channels` registers whose last sample comes before
    /// `end`.
    #[pyo3(signature = (*, channels, end))]
    fn early_finishers<'py>(
        &self,
        py: Python<'py>,
        channels: Vec<String>,
        end: i64,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let codes = obis_codes(py, &channels)?;
        Ok(serials(py, &self.inner.early_finishers(&codes, end)))
    }

    /// Puts the readings of `earlier` (Native blocks ordered by meter, obis) in front of
    /// their series; a refused block changes nothing. Without the GIL.
    fn add_earlier(&mut self, py: Python<'_>, earlier: &[u8]) -> PyResult<()> {
        let inner = &mut self.inner;
        codec(py, guarded(py, true, || inner.add_earlier(earlier))?)
    }

    /// Puts the readings of `later` (Native blocks ordered by meter, obis) behind their
    /// series; a refused block changes nothing. Without the GIL.
    fn add_later(&mut self, py: Python<'_>, later: &[u8]) -> PyResult<()> {
        let inner = &mut self.inner;
        codec(py, guarded(py, true, || inner.add_later(later))?)
    }
}

/// What `ConsumptionJob.rows` derives: a parsed slice, or the readings' bytes.
#[derive(FromPyObject)]
pub(super) enum Readings<'py> {
    Slice(PyRef<'py, ReadingSlice>),
    Bytes(Bound<'py, PyBytes>),
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
