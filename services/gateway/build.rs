//! Generates the gateway's server half of `parley.gateway.v1.GatewayService`
//! with its own codec: the stream's outbound frames arrive already encoded
//! (a delivery is encoded once per gateway, not once per device) and the
//! codec's buffers start small (an idle stream holds little). The wire
//! format is the proto's; clients use the code generated from it.

fn main() {
    let connect = tonic_build::manual::Method::builder()
        .name("connect")
        .route_name("Connect")
        .input_type("parley_proto::gateway::ConnectRequest")
        .output_type("crate::wire::Frame")
        .codec_path("crate::wire::Codec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("GatewayService")
        .package("parley.gateway.v1")
        .method(connect)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[service]);
}
