//! `GET /openapi.json`: the OpenAPI 3.1 document of order-api, generated from the handlers'
//! `#[utoipa::path]` annotations and the types they take and return. The limits come from the
//! constants the validation uses (see [`limits`]), never from numbers written here twice.

use actix_web::HttpResponse;
use outbox_core::{
    event::{MAX_ID_LEN, MAX_QUANTITY, MAX_UNIT_PRICE},
    ops::OpsApi,
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

/// Every route of order-api.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-api",
        description = "Places orders; each order and its order.placed.v1 event are written in one transaction."
    ),
    paths(orders::create_order, orders::get_order, orders::list_user_orders, document),
    components(schemas(CreateOrder, crate::orders::Order)),
    modifiers(&Limits)
)]
pub(crate) struct ApiDoc;

/// The whole document: the routes above and the operations routes of every service.
pub(crate) fn api() -> Document {
    let mut document = ApiDoc::openapi();
    document.merge(OpsApi::openapi());
    document
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub(crate) async fn document() -> HttpResponse {
    HttpResponse::Ok().json(api())
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
