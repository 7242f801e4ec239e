//! A generator source: TPC-H tables produced in-process by tpchgen, deterministic for a
//! scale factor. It gives every machine the same realistic data (the embedded default and the
//! benchmarks use it) with no files or servers.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use ferry_engine::channel::ByteBudget;
use ferry_engine::{
    BatchStream, Charge, Checkpoint, Error, Partition, Result, Source, SourceBatch, read_ahead,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tpchgen::generators as g;
use tpchgen_arrow as ta;

/// The TPC-H tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TpchTable {
    /// lineitem: 6 million rows per unit of scale.
    Lineitem,
    /// orders: 1.5 million rows per unit of scale.
    Orders,
    /// customer.
    Customer,
    /// part.
    Part,
    /// partsupp.
    Partsupp,
    /// supplier.
    Supplier,
    /// nation (25 rows).
    Nation,
    /// region (5 rows).
    Region,
}

/// The `tpch` source of a job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TpchSourceSpec {
    /// Which table.
    pub table: TpchTable,
    /// Scale factor: 1 is lineitem's 6 million rows (about 760 MB as CSV).
    pub scale_factor: f64,
    /// Partitions to generate (default: at least `parallel_copies`, about 1 per million rows).
    #[serde(default)]
    pub partitions: Option<usize>,
}

impl TpchSourceSpec {
    /// Checks the spec without I/O.
    pub fn validate(&self) -> Result<()> {
        if !(self.scale_factor > 0.0 && self.scale_factor <= 1000.0) {
            return Err(Error::config(
                "tpch `scale_factor` must be above 0 and at most 1000",
            ));
        }
        if self.partitions == Some(0) {
            return Err(Error::config("tpch `partitions` must be at least 1"));
        }
        Ok(())
    }
}

type Batches =
    Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>> + Send>;

fn generate(
    table: TpchTable,
    sf: f64,
    part: i32,
    parts: i32,
    batch_rows: usize,
) -> (SchemaRef, Batches) {
    macro_rules! gen_table {
        ($gen:ty, $arrow:ty) => {{
            let it = <$arrow>::new(<$gen>::new(sf, part, parts)).with_batch_size(batch_rows);
            (it.schema(), Box::new(it) as Batches)
        }};
    }
    match table {
        TpchTable::Lineitem => gen_table!(g::LineItemGenerator, ta::LineItemArrow),
        TpchTable::Orders => gen_table!(g::OrderGenerator, ta::OrderArrow),
        TpchTable::Customer => gen_table!(g::CustomerGenerator, ta::CustomerArrow),
        TpchTable::Part => gen_table!(g::PartGenerator, ta::PartArrow),
        TpchTable::Partsupp => gen_table!(g::PartSuppGenerator, ta::PartSuppArrow),
        TpchTable::Supplier => gen_table!(g::SupplierGenerator, ta::SupplierArrow),
        TpchTable::Nation => gen_table!(g::NationGenerator, ta::NationArrow),
        TpchTable::Region => gen_table!(g::RegionGenerator, ta::RegionArrow),
    }
}

/// Generates a TPC-H table.
pub struct TpchSource {
    spec: TpchSourceSpec,
    schema: SchemaRef,
    batch_rows: usize,
}

impl TpchSource {
    /// A generator for `spec`.
    pub fn new(spec: TpchSourceSpec, batch_rows: usize) -> Self {
        let (schema, _) = generate(spec.table, spec.scale_factor, 1, 1, batch_rows);
        Self {
            spec,
            schema,
            batch_rows,
        }
    }
}

#[async_trait::async_trait]
impl Source for TpchSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn plan(&self, parallelism: usize) -> Result<Vec<Partition>> {
        let small = matches!(self.spec.table, TpchTable::Nation | TpchTable::Region);
        let n = match self.spec.partitions {
            Some(n) => n,
            None if small => 1,
            None => parallelism.max((self.spec.scale_factor * 6.0).ceil() as usize),
        };
        (0..n)
            .map(|i| {
                Partition::new(
                    i,
                    format!("tpch {:?} part {} of {n}", self.spec.table, i + 1),
                    None,
                    &(i + 1, n),
                )
            })
            .collect()
    }

    fn open(
        &self,
        partition: &Partition,
        resume: Option<Checkpoint>,
        budget: &ByteBudget,
    ) -> Result<BatchStream> {
        let (part, parts): (usize, usize) = partition.decode()?;
        let (table, sf, batch_rows) = (self.spec.table, self.spec.scale_factor, self.batch_rows);
        let skip = resume.map_or(0, |c| c.records);
        let (ahead, mut rx) = read_ahead(budget, 2);
        ferry_engine::task::spawn_blocking(move || {
            let (_, batches) = generate(table, sf, part as i32, parts as i32, batch_rows);
            let mut records = 0u64;
            for batch in batches {
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        ahead.blocking_fail(Error::internal(format!("tpch generator: {e}")));
                        return;
                    }
                };
                let rows = batch.num_rows() as u64;
                let batch = if records + rows <= skip {
                    records += rows;
                    continue;
                } else if records < skip {
                    let offset = (skip - records) as usize;
                    batch.slice(offset, batch.num_rows() - offset)
                } else {
                    batch
                };
                records += rows;
                let checkpoint = Checkpoint {
                    records,
                    position: None,
                    line: None,
                };
                let item = SourceBatch {
                    batch,
                    checkpoint,
                    skipped: vec![],
                    input_bytes: 0,
                    charge: Charge::default(),
                };
                if !ahead.blocking_send(item) {
                    return;
                }
            }
        });
        Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
    }

    fn connector(&self) -> &'static str {
        "tpch"
    }
}
