//! `GET /openapi.json`: the OpenAPI 3.1 document of order-api, generated from the handlers'
//! `#[utoipa::path]` annotations and the types they take and return. The limits come from the
//! constants the validation uses (see [`limits`]), never from numbers written here twice.

use outbox_core::{
    event::{MAX_ID_LEN, MAX_QUANTITY, MAX_UNIT_PRICE},
    ops,
};
use utoipa::{
    openapi::{
        path::{Operation, ParameterIn},
        schema::{AdditionalProperties, KnownFormat, ObjectBuilder, SchemaFormat, Type},
        OpenApi as Document, RefOr, Schema,
    },
    Modify, OpenApi, PartialSchema, ToSchema,
};

use super::orders::{self, CreateOrder, MAX_IDEMPOTENCY_KEY_LEN, MAX_LIST_LIMIT};
use crate::order_store::{Order, PLACED};

/// Every route of order-api.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-api",
        description = "Places orders; each order and its order.placed.v1 event are written in one transaction."
    ),
    paths(orders::create_order, orders::get_order, orders::list_user_orders),
    components(schemas(CreateOrder, Order)),
    modifiers(&Limits)
)]
pub(crate) struct ApiDoc;

/// The whole document: the routes above and the operations routes of every service.
pub(crate) fn api() -> Document {
    ops::openapi_document(ApiDoc::openapi())
}

/// A user or product id as `outbox_core::event::validate_id` accepts it: 1 to [`MAX_ID_LEN`]
/// characters, no control character, not only white space.
pub(crate) fn id_schema(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LEN))
        .pattern(Some(ID_PATTERN))
}

/// No control character (Unicode Cc: U+0000-U+001F, U+007F-U+009F), and one character at least
/// that is not white space.
const ID_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$";

/// `Idempotency-Key`: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII characters.
fn idempotency_key_pattern() -> String {
    format!("^[\\x21-\\x7E]{{1,{MAX_IDEMPOTENCY_KEY_LEN}}}$")
}

impl PartialSchema for CreateOrder {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("userId", id_schema("Who places the order."))
            .required("userId")
            .property(
                "productId",
                id_schema("The product sold; also the event's Kafka key."),
            )
            .required("productId")
            .property(
                "quantity",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                    .minimum(Some(1))
                    .maximum(Some(MAX_QUANTITY)),
            )
            .required("quantity")
            .property(
                "unitPrice",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .description(Some(
                        "Minor units; quantity × unitPrice must fit in 64 bits.",
                    ))
                    .minimum(Some(0))
                    .maximum(Some(MAX_UNIT_PRICE)),
            )
            .required("unitPrice")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for CreateOrder {}

/// Written out, as [`Order`] serialises by hand: its event value and its status.
impl PartialSchema for Order {
    fn schema() -> RefOr<Schema> {
        let typed = |schema_type, format: Option<KnownFormat>| {
            ObjectBuilder::new()
                .schema_type(schema_type)
                .format(format.map(SchemaFormat::KnownFormat))
        };
        let string = || typed(Type::String, None);
        #[allow(deprecated)] // `example`, as the document has always had it.
        let status = string().example(Some(PLACED.into()));
        let properties = [
            ("orderId", typed(Type::String, Some(KnownFormat::Uuid))),
            ("userId", string()),
            ("productId", string()),
            ("quantity", typed(Type::Integer, Some(KnownFormat::Int32))),
            ("unitPrice", typed(Type::Integer, Some(KnownFormat::Int64))),
            (
                "totalPrice",
                typed(Type::Integer, Some(KnownFormat::Int64))
                    .description(Some("quantity × unitPrice, minor units.")),
            ),
            ("status", status),
            (
                "createdAt",
                typed(Type::String, Some(KnownFormat::DateTime)),
            ),
        ];
        properties
            .into_iter()
            .fold(
                ObjectBuilder::new()
                    .description(Some("An order as stored and as returned by the API.")),
                |object, (name, schema)| object.property(name, schema).required(name),
            )
            .into()
    }
}

impl ToSchema for Order {}

/// Puts the limits of the header and query parameters, from the validation's constants, into
/// the operations the path macros described.
struct Limits;

impl Modify for Limits {
    fn modify(&self, document: &mut Document) {
        let operations = document.paths.paths.iter_mut().flat_map(|(_, item)| {
            [&mut item.get, &mut item.post]
                .into_iter()
                .flatten()
                .collect::<Vec<&mut Operation>>()
        });
        for operation in operations {
            for parameter in operation.parameters.iter_mut().flatten() {
                let schema = match (&parameter.parameter_in, parameter.name.as_str()) {
                    (ParameterIn::Header, "Idempotency-Key") => ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(MAX_IDEMPOTENCY_KEY_LEN))
                        .pattern(Some(idempotency_key_pattern())),
                    (ParameterIn::Query, "limit") => ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(MAX_LIST_LIMIT))
                        .default(Some(100.into())),
                    (ParameterIn::Path, "userId") => id_schema("Whose orders."),
                    _ => continue,
                };
                parameter.schema = Some(schema.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn the_order_schema_is_unchanged_and_names_every_field_an_order_serialises() {
        let schema = serde_json::to_value(Order::schema()).unwrap();
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "description": "An order as stored and as returned by the API.",
                "required": ["orderId", "userId", "productId", "quantity", "unitPrice",
                             "totalPrice", "status", "createdAt"],
                "properties": {
                    "orderId": {"type": "string", "format": "uuid"},
                    "userId": {"type": "string"},
                    "productId": {"type": "string"},
                    "quantity": {"type": "integer", "format": "int32"},
                    "unitPrice": {"type": "integer", "format": "int64"},
                    "totalPrice": {"type": "integer", "format": "int64",
                                   "description": "quantity \u{d7} unitPrice, minor units."},
                    "status": {"type": "string", "example": "PLACED"},
                    "createdAt": {"type": "string", "format": "date-time"},
                },
            })
        );
        let Value::Object(order) =
            serde_json::to_value(crate::order_store::tests::sample()).unwrap()
        else {
            panic!("an order serialises as an object");
        };
        let named: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(named, order.keys().collect::<Vec<_>>());
    }
}
