//! Rows as the services would have written them, made in bulk by single statements: outbox rows
//! shaped exactly like order-api's (UUIDv7 ids, the JSON payload, CloudEvents columns,
//! traceparent) and catalog products.

use outbox_core::event::{ORDER_API_SOURCE, ORDER_PLACED_TYPE};
use sqlx::PgConnection;

/// Product id of key number `k` (1-based), as the demo's `CATALOG-0001`.
pub fn product_id(k: u64) -> String {
    format!("CATALOG-{k:04}")
}

/// The same, in SQL, of an integer expression `k`.
macro_rules! product_id_sql {
    ($k:literal) => {
        concat!(
            "('CATALOG-' || case when ",
            $k,
            " < 10000 then lpad((",
            $k,
            ")::text, 4, '0') else (",
            $k,
            ")::text end)"
        )
    };
}

/// Which keys the rows get.
#[derive(Debug, Clone)]
pub enum Keys {
    /// Row `i` gets key `(i mod n) + 1`.
    Spread(u64),
    /// Every row gets this key.
    One(String),
}

/// State of inserted rows: pending, as order-api writes them, or dead (a row that ran out of
/// attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Dead,
}

/// Ids of the inserted rows.
#[derive(Debug, Clone, Copy)]
pub struct Inserted {
    pub first_id: i64,
    pub last_id: i64,
    pub rows: i64,
}

/// Inserts `rows` outbox rows for `topic` in one statement, in key order `keys`.
pub async fn outbox_rows(
    conn: &mut PgConnection,
    topic: &str,
    rows: u64,
    keys: &Keys,
    state: State,
) -> Result<Inserted, sqlx::Error> {
    let (spread, one) = match keys {
        Keys::Spread(n) => (i64::try_from(*n).unwrap_or(i64::MAX), None),
        Keys::One(key) => (1, Some(key.as_str())),
    };
    let (state, attempts, last_error) = match state {
        State::Pending => ("pending", 0, None),
        State::Dead => ("dead", 10, Some("bench: a row that ran out of attempts")),
    };
    let sql = concat!(
        r#"with g as (
             select i, coalesce($4::text, "#,
        product_id_sql!("i % $3 + 1"),
        r#") as product_id,
                    1 + i % 5 as quantity,
                    md5(random()::text || i) as h1, md5(i || random()::text) as h2,
                    lpad(to_hex((extract(epoch from clock_timestamp()) * 1000)::bigint), 12, '0') as ms
               from generate_series(1, $2::bigint) as i
         ), ids as (
             select i, product_id, quantity,
                    (ms || '7' || substr(h1, 1, 3) || '8' || substr(h1, 4, 15))::uuid as order_id,
                    (ms || '7' || substr(h2, 1, 3) || '9' || substr(h2, 4, 15))::uuid as event_id,
                    '00-' || md5(h1 || h2) || '-' || substr(h2, 17, 16) || '-01' as traceparent
               from g
         ), inserted as (
             insert into outbox (event_id, topic, partition_key, event_type, source, subject, payload,
                                 traceparent, state, attempts, last_error, created_at)
             select event_id, $1, product_id, $5, $6, order_id::text,
                    jsonb_build_object(
                        'orderId', order_id, 'userId', 'user-' || (i % 1000), 'productId', product_id,
                        'quantity', quantity, 'unitPrice', 1500, 'totalPrice', quantity * 1500,
                        'createdAt', to_char(now() at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
                    traceparent, $7, $8, $9, now()
               from ids
              order by i
             returning id
         )
         select coalesce(min(id), 0), coalesce(max(id), 0), count(*) from inserted"#
    );
    let (first_id, last_id, rows): (i64, i64, i64) = sqlx::query_as(sql)
        .bind(topic)
        .bind(i64::try_from(rows).unwrap_or(i64::MAX))
        .bind(spread)
        .bind(one)
        .bind(ORDER_PLACED_TYPE)
        .bind(ORDER_API_SOURCE)
        .bind(state)
        .bind(attempts)
        .bind(last_error)
        .fetch_one(conn)
        .await?;
    Ok(Inserted {
        first_id,
        last_id,
        rows,
    })
}

/// Inserts products `1..=n` with `stock` each, as the catalog's demo products.
pub async fn products(conn: &mut PgConnection, n: u64, stock: i32) -> Result<(), sqlx::Error> {
    let sql = concat!(
        "insert into products (product_id, product_name, stock, unit_price)
         select ",
        product_id_sql!("k"),
        ", 'Bench product ' || k, $2, 1500
           from generate_series(1, $1::bigint) as k"
    );
    sqlx::query(sql)
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .bind(stock)
        .execute(conn)
        .await?;
    Ok(())
}

/// Wakes an idle relay at once (as order-api does after its commits).
pub async fn wake_relay(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, '')")
        .bind(outbox_core::db::OUTBOX_WAKEUP_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}
