//! What the consumer persisted: the catalog database of a [`Fixture`].

use std::collections::HashMap;

use uuid::Uuid;

use super::Fixture;

impl Fixture {
    pub async fn seed_products(&self, products: &[(&str, i32)]) {
        for (product_id, stock) in products {
            sqlx::query(
                "insert into products (product_id, product_name, stock, unit_price)
                 values ($1, $2, $3, 1500)",
            )
            .bind(product_id)
            .bind(format!("Product {product_id}"))
            .bind(stock)
            .execute(&self.pool)
            .await
            .expect("seed product");
        }
    }

    pub async fn stock(&self, product_id: &str) -> i32 {
        sqlx::query_scalar("select stock from products where product_id = $1")
            .bind(product_id)
            .fetch_one(&self.pool)
            .await
            .expect("stock")
    }

    /// `processed_events` rows by outcome.
    pub async fn outcomes(&self) -> HashMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>(
            "select outcome::text, count(*) from processed_events group by outcome",
        )
        .fetch_all(&self.pool)
        .await
        .expect("outcomes")
        .into_iter()
        .collect()
    }

    pub async fn processed_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from processed_events")
            .fetch_one(&self.pool)
            .await
            .expect("processed count")
    }

    pub async fn is_processed(&self, event_id: Uuid) -> bool {
        sqlx::query_scalar("select exists (select 1 from processed_events where event_id = $1)")
            .bind(event_id)
            .fetch_one(&self.pool)
            .await
            .expect("processed lookup")
    }
}
