# The broker server in an image (deploy/kubernetes/ uses it as broker:latest):
#   docker build -t broker:latest .
# Not built on the machines this repository is tested on (no Docker there).
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p broker --bin broker

FROM debian:bookworm-slim
COPY --from=build /src/target/release/broker /usr/local/bin/broker
RUN useradd --system --uid 10001 broker && mkdir /data && chown broker /data
USER broker
VOLUME /data
EXPOSE 50051 7001 9464
ENTRYPOINT ["broker"]
CMD ["serve", "--data-dir", "/data", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464"]
