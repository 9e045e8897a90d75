-- Demo products of the walkthrough (run.sh and compose.yaml). An existing product keeps its stock.
insert into products (product_id, product_name, stock, unit_price) values
    ('CATALOG-0001', 'Berlin', 100, 1500),
    ('CATALOG-0002', 'Tokyo', 100, 900),
    ('CATALOG-0003', 'Stockholm', 100, 1200)
on conflict (product_id) do nothing;
