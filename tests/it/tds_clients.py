"""Independent TDS clients for cross-checking ferry's SQL Server test peer.

pytds (python-tds, pure Python) and pymssql (FreeTDS) read a table from the peer and print
each value in a canonical text form, so the Rust test can compare them with the values it
put in the table; pytds also bulk-loads rows (INSERT BULK) into the peer.

usage:
  tds_clients.py read pytds|pymssql PORT CA DATABASE USER TABLE   (password in FERRY_IT_MSSQL_PASSWORD)
  tds_clients.py bulk PORT CA DATABASE USER TABLE < rows.json      (pytds copy_to)
"""

import datetime
import decimal
import json
import os
import struct
import sys
import tempfile
import uuid


def canonical(value, type_name):
    """One value as text: exact for every type (floats as their IEEE bytes)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if type_name == "real":
            return struct.pack("<f", value).hex()
        return struct.pack("<d", value).hex()
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.time):
        return value.isoformat(timespec="microseconds")
    return str(value)


def pytds_connect(port, ca, database, user):
    import pytds

    return pytds.connect(
        server="127.0.0.1",
        port=port,
        database=database,
        user=user,
        password=os.environ["FERRY_IT_MSSQL_PASSWORD"],
        cafile=ca,
        validate_host=False,
        autocommit=True,
    )


def read(client, port, ca, database, user, table):
    password = os.environ["FERRY_IT_MSSQL_PASSWORD"]
    if client == "pytds":
        conn = pytds_connect(port, ca, database, user)
    else:
        import pymssql

        # FreeTDS takes its TLS settings from a configuration file.
        conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
        conf.write(
            "[global]\n"
            "  tds version = 7.4\n"
            "  encryption = require\n"
            "  ca file = %s\n"
            "  check certificate hostname = no\n" % ca
        )
        conf.close()
        os.environ["FREETDSCONF"] = conf.name
        conn = pymssql.connect(
            server="127.0.0.1",
            port=str(port),
            user=user,
            password=password,
            database=database,
            tds_version="7.4",
            conn_properties="",
            autocommit=True,
        )
    cursor = conn.cursor()
    cursor.execute("EXEC sp_describe_first_result_set N'SELECT * FROM %s'" % table)
    types = [row[5] for row in cursor.fetchall()]
    cursor.execute("SELECT * FROM %s" % table)
    rows = [
        [canonical(v, t) for v, t in zip(row, types)] for row in cursor.fetchall()
    ]
    json.dump({"types": types, "rows": rows}, sys.stdout)


def params(port, ca, database, user, table):
    """A parameterized query: pytds sends it as an RPC request to sp_executesql."""
    conn = pytds_connect(port, ca, database, user)
    cursor = conn.cursor()
    cursor.execute(
        "SELECT id, name FROM %s WHERE id >= %%s AND id < %%s" % table, (2, 5)
    )
    by_range = [list(row) for row in cursor.fetchall()]
    cursor.execute("SELECT id, name FROM %s WHERE name = %%s" % table, ("o'neil",))
    by_name = [list(row) for row in cursor.fetchall()]
    json.dump({"by_range": by_range, "by_name": by_name}, sys.stdout)


def bulk(port, ca, database, user, table):
    import pytds
    import pytds.tds_base

    spec = json.load(sys.stdin)
    conn = pytds_connect(port, ca, database, user)

    def value(v, kind):
        if v is None:
            return None
        if kind == "decimal":
            return decimal.Decimal(v)
        if kind == "date":
            return datetime.date.fromisoformat(v)
        if kind == "datetime":
            return datetime.datetime.fromisoformat(v)
        if kind == "bytes":
            return bytes.fromhex(v)
        if kind == "uuid":
            return uuid.UUID(v)
        return v

    from pytds import tds_types as t

    def column_type(name):
        """A pytds type from a declaration: int, decimal(38,10), nvarchar(100), ..."""
        base, _, args = name.partition("(")
        args = [a for a in args.rstrip(")").split(",") if a]
        if base == "int":
            return t.IntType()
        if base == "bigint":
            return t.BigIntType()
        if base == "bit":
            return t.BitType()
        if base == "float":
            return t.FloatType()
        if base == "decimal":
            return t.DecimalType(precision=int(args[0]), scale=int(args[1]))
        if base == "nvarchar":
            return t.NVarCharMaxType() if args == ["max"] else t.NVarCharType(size=int(args[0]))
        if base == "varbinary":
            return t.VarBinaryMaxType() if args == ["max"] else t.VarBinaryType(size=int(args[0]))
        if base == "date":
            return t.DateType()
        if base == "datetime2":
            return t.DateTime2Type(precision=int(args[0]))
        if base == "uniqueidentifier":
            return t.UniqueIdentifierType()
        raise ValueError(name)

    columns = [
        pytds.tds_base.Column(
            name=name, type=column_type(declared), flags=pytds.tds_base.Column.fNullable
        )
        for name, declared in zip(spec["columns"], spec["types"])
    ]
    kinds = spec["kinds"]
    rows = [tuple(value(v, k) for v, k in zip(row, kinds)) for row in spec["rows"]]
    cursor = conn.cursor()
    schema, _, name = table.partition(".")
    cursor.copy_to(table_or_view=name, schema=schema, columns=columns, data=rows)
    json.dump({"loaded": len(rows)}, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "read":
        read(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7])
    elif sys.argv[1] == "params":
        params(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6])
    else:
        bulk(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6])
