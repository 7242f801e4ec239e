//! The SQL Server cases against a real server, when `FERRY_TEST_MSSQL` holds an ADO.NET
//! connection string (for example `Server=tcp:127.0.0.1,1433;Database=ferry;User
//! Id=sa;Password=...;TrustServerCertificate=true`; see docs/sqlserver.md). Without it each
//! test says it skipped, and why.
//!
//! Values are compared by the server itself: `EXCEPT` both ways between the source table and
//! the table ferry loaded (through Parquet, and table to table).

use tiberius::{Client, Config};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::support::{ferry, read_parquet};

const ENV: &str = "FERRY_TEST_MSSQL";

/// The connection string, or `None` after saying the test skipped.
fn target(test: &str) -> Option<String> {
    match std::env::var(ENV) {
        Ok(s) if !s.trim().is_empty() => Some(s),
        _ => {
            eprintln!(
                "{test}: skipped: {ENV} is not set (an ADO.NET connection string to a real SQL Server; see docs/sqlserver.md)"
            );
            None
        }
    }
}

async fn connect(ado: &str) -> Client<Compat<TcpStream>> {
    ferry_connectors::tls::install_crypto_provider();
    let config = Config::from_ado_string(ado).unwrap();
    let tcp = TcpStream::connect(config.get_addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    Client::connect(config, tcp.compat_write()).await.unwrap()
}

async fn run(client: &mut Client<Compat<TcpStream>>, sql: &str) {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_results()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn count(client: &mut Client<Compat<TcpStream>>, sql: &str) -> i64 {
    let row = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_row()
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i32, _>(0)
        .ok()
        .flatten()
        .map(i64::from)
        .or_else(|| row.try_get::<i64, _>(0).ok().flatten())
        .unwrap()
}

/// Every type ferry reads, at its limits, and NULL in every column.
const CREATE: &str = "CREATE TABLE {t} (
    id int NOT NULL PRIMARY KEY, c_bit bit, c_tinyint tinyint, c_smallint smallint, c_int int,
    c_bigint bigint, c_real real, c_float float, c_dec38_10 decimal(38,10), c_num38_0 numeric(38,0),
    c_dec38_37 decimal(38,37), c_money money, c_smallmoney smallmoney, c_char char(10),
    c_varchar varchar(50), c_nchar nchar(5), c_nvarchar nvarchar(100), c_nvarchar_max nvarchar(max),
    c_varbinary varbinary(16), c_varbinary_max varbinary(max), c_date date, c_time7 time(7),
    c_time3 time(3), c_datetime datetime, c_smalldatetime smalldatetime, c_datetime2_7 datetime2(7),
    c_datetime2_3 datetime2(3), c_guid uniqueidentifier, c_xml xml, c_dto3 datetimeoffset(3),
    c_dto7 datetimeoffset(7))";

const INSERT: &str = "INSERT INTO {t} VALUES
 (1, 0, 0, -32768, -2147483648, -9223372036854775808, -3.4028235e38, -1.7976931348623157e308,
  -9999999999999999999999999999.9999999999, -99999999999999999999999999999999999999,
  -9.9999999999999999999999999999999999999, -922337203685477.5808, -214748.3648, 'abc', '',
  N'日本', N'', REPLICATE(CAST(N'日本語🙂 ' AS nvarchar(max)), 5000), 0x, 0x00FF,
  '0001-01-01', '00:00:00', '00:00:00', '1753-01-01', '1900-01-01', '1677-09-22', '0001-01-01',
  '6F9619FF-8B86-D011-B42D-00C04FC964FF', N'<a b=\"1\">x</a>', '0001-01-01 00:00:00.000 -14:00',
  '1970-01-01 00:00:00 +00:00'),
 (2, 1, 255, 32767, 2147483647, 9223372036854775807, 1.17549435e-38, 1.7976931348623157e308,
  9999999999999999999999999999.9999999999, 99999999999999999999999999999999999999,
  9.9999999999999999999999999999999999999, 922337203685477.5807, 214748.3647, '0123456789',
  'héllo', N'12345', N'日本語 🙂', N'', 0xDEADBEEF, 0x, '9999-12-31', '23:59:59.9999999',
  '23:59:59.999', '9999-12-31 23:59:59.997', '2079-06-06 23:59', '2262-04-10 23:59:59.9999999',
  '9999-12-31 23:59:59.999', 'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF', N'<r/>',
  '9999-12-31 23:59:59.999 +14:00', '2024-02-29 17:30:00.1234567 +05:30'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

/// `a EXCEPT b` and `b EXCEPT a` (xml compared as text).
fn except_both_ways(a: &str, b: &str) -> String {
    let cols = "id, c_bit, c_tinyint, c_smallint, c_int, c_bigint, c_real, c_float, c_dec38_10, \
        c_num38_0, c_dec38_37, c_money, c_smallmoney, c_char, c_varchar, c_nchar, c_nvarchar, \
        c_nvarchar_max, c_varbinary, c_varbinary_max, c_date, c_time7, c_time3, c_datetime, \
        c_smalldatetime, c_datetime2_7, c_datetime2_3, c_guid, CAST(c_xml AS nvarchar(max)), \
        c_dto3, DATEPART(TZOFFSET, c_dto3), c_dto7, DATEPART(TZOFFSET, c_dto7)";
    format!(
        "SELECT COUNT(*) FROM ((SELECT {cols} FROM {a} EXCEPT SELECT {cols} FROM {b}) \
         UNION ALL (SELECT {cols} FROM {b} EXCEPT SELECT {cols} FROM {a})) AS d"
    )
}

fn copy_job(dir: &std::path::Path, job: serde_json::Value) -> String {
    let connections = dir.join("connections.json");
    std::fs::write(
        &connections,
        serde_json::json!({"mssql": {"type": "sqlserver", "connection_string": {"env": ENV}}})
            .to_string(),
    )
    .unwrap();
    let file = dir.join("job.json");
    std::fs::write(&file, job.to_string()).unwrap();
    crate::support::succeed(
        ferry()
            .arg("copy")
            .arg(&file)
            .arg("--connections")
            .arg(&connections),
    )
}

#[test]
fn a_real_server_round_trips_every_type_through_parquet_and_table_to_table() {
    let Some(ado) = target("a_real_server_round_trips_every_type") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = format!("dbo.ferry_it_{}", std::process::id());
    let mut client = rt.block_on(connect(&ado));
    rt.block_on(async {
        for name in [&t, &format!("{t}_back"), &format!("{t}_copy")] {
            run(&mut client, &format!("DROP TABLE IF EXISTS {name}")).await;
        }
        run(&mut client, &CREATE.replace("{t}", &t)).await;
        run(&mut client, &INSERT.replace("{t}", &t)).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let parquet = dir.path().join("out.parquet");
    copy_job(
        dir.path(),
        serde_json::json!({"name": "real-to-parquet",
            "source": {"type": "sqlserver", "connection": "mssql", "table": t,
                       "partition": {"column": "id", "count": 2}},
            "sink": {"type": "file", "path": parquet, "format": {"type": "parquet"}}}),
    );
    let rows: usize = read_parquet(&parquet).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 3);
    copy_job(
        dir.path(),
        serde_json::json!({"name": "parquet-to-real",
            "source": {"type": "file", "path": parquet, "format": {"type": "parquet"}},
            "sink": {"type": "sqlserver", "connection": "mssql", "table": format!("{t}_back")}}),
    );
    copy_job(
        dir.path(),
        serde_json::json!({"name": "real-to-real",
            "source": {"type": "sqlserver", "connection": "mssql", "table": t},
            "sink": {"type": "sqlserver", "connection": "mssql", "table": format!("{t}_copy")}}),
    );
    rt.block_on(async {
        for other in [format!("{t}_back"), format!("{t}_copy")] {
            let differ = count(&mut client, &except_both_ways(&t, &other)).await;
            assert_eq!(differ, 0, "{other} differs from {t}");
        }
        for name in [&t, &format!("{t}_back"), &format!("{t}_copy")] {
            run(&mut client, &format!("DROP TABLE IF EXISTS {name}")).await;
        }
    });
}
