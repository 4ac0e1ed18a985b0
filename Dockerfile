# Images of the five Parley services, one target each:
#
#   docker build --target gateway -t ghcr.io/parley-chat/parley-gateway:0.1.0 .
#
# (`make images` builds all five with the names and tags the Helm chart uses by
# default.) The build stage compiles every service binary once; each final image
# holds one binary on distroless `cc` (glibc, CA certificates, no shell), running
# as the distroless `nonroot` user (65532). Migrations are
# embedded in the binaries, so the same image runs the chart's migration Job
# (`parley-<service> migrate`).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# protoc comes vendored (protoc-bin-vendored); nothing else is needed.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p parley-gateway -p parley-message -p parley-presence \
        -p parley-receipt -p parley-notification \
    && mkdir -p /out \
    && cp target/release/parley-gateway target/release/parley-message \
          target/release/parley-presence target/release/parley-receipt \
          target/release/parley-notification /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532
WORKDIR /home/nonroot

FROM runtime AS gateway
COPY --from=build /out/parley-gateway /usr/local/bin/parley-gateway
ENV PARLEY_GATEWAY_LISTEN=0.0.0.0:50051
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/parley-gateway"]

FROM runtime AS message
COPY --from=build /out/parley-message /usr/local/bin/parley-message
ENV PARLEY_MESSAGE_LISTEN=0.0.0.0:50052
EXPOSE 50052
ENTRYPOINT ["/usr/local/bin/parley-message"]

FROM runtime AS presence
COPY --from=build /out/parley-presence /usr/local/bin/parley-presence
ENV PARLEY_PRESENCE_LISTEN=0.0.0.0:50053
EXPOSE 50053
ENTRYPOINT ["/usr/local/bin/parley-presence"]

FROM runtime AS receipt
COPY --from=build /out/parley-receipt /usr/local/bin/parley-receipt
ENV PARLEY_RECEIPT_LISTEN=0.0.0.0:50054
EXPOSE 50054
ENTRYPOINT ["/usr/local/bin/parley-receipt"]

FROM runtime AS notification
COPY --from=build /out/parley-notification /usr/local/bin/parley-notification
ENV PARLEY_NOTIFICATION_LISTEN=0.0.0.0:50055
EXPOSE 50055
ENTRYPOINT ["/usr/local/bin/parley-notification"]
