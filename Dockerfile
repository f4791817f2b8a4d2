# Spindle image: one binary for every role (spindle serve | router | worker).
FROM rust:1-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq cmake clang libclang-dev patch && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/spindle /spindle

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq ca-certificates libgomp1 && rm -rf /var/lib/apt/lists/*
COPY --from=build /spindle /usr/local/bin/spindle
ENV SPINDLE_HOST=0.0.0.0 SPINDLE_CACHE_DIR=/models
VOLUME /models
ENTRYPOINT ["spindle"]
CMD ["serve"]
