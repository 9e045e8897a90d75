//! The blocked-key rule is defined once, by the `outbox_blocking` view, and its partial index
//! serves every query that reads the view.

use outbox_core::db::ORDERS_MIGRATOR;

#[tokio::test]
async fn the_blocking_view_has_its_partial_index_predicate_and_the_planner_serves_it_from_that_index(
) {
    let (_, pool) = testkit::fresh_database(&ORDERS_MIGRATOR)
        .await
        .expect("fresh database");
    let (view, index): (String, String) = sqlx::query_as(
        "select pg_get_viewdef('outbox_blocking'::regclass),
                pg_get_expr(indpred, indrelid)
           from pg_index
          where indexrelid = 'outbox_blocking_key_id_idx'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (_, condition) = view.split_once("WHERE ").expect("the view has a condition");
    let condition = condition
        .trim()
        .trim_end_matches(';')
        .replace("outbox.", "");
    assert_eq!(
        condition, index,
        "outbox_blocking selects exactly the rows outbox_blocking_key_id_idx holds"
    );

    // With sequential scans off, a plan without the index would mean the planner cannot prove
    // the view's rows are in it.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("set enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "explain select 1 from outbox_blocking where partition_key = 'k' and id < 100",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("outbox_blocking_key_id_idx"),
        "a probe of the view uses the partial index:\n{plan}"
    );
}
