//! What the benches share.

use arrow::record_batch::RecordBatch;

/// TPC-H lineitem at scale 0.01 (60,175 rows) as Arrow batches of 8,192 rows, from ferry's
/// generator source.
pub fn lineitem_batches() -> Vec<RecordBatch> {
    let source = ferry_connectors::tpch::TpchSource::new(
        serde_json::from_str(r#"{"table":"lineitem","scale_factor":0.01,"partitions":1}"#).unwrap(),
        8192,
    );
    actix::System::new().block_on(async move {
        use ferry_engine::Source;
        use futures::StreamExt;
        let partition = source.plan(1).await.unwrap().remove(0);
        source
            .open(
                &partition,
                None,
                &ferry_engine::channel::ByteBudget::unbounded(),
            )
            .unwrap()
            .map(|b| b.unwrap().batch)
            .collect()
            .await
    })
}
