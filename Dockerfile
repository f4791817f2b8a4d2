# Spindle image: one binary for every role (spindle serve | router | worker | download).
#
#   docker build -t spindle:0.1.0 .                                  # CPU (the default target)
#   docker build --target runtime-cuda -t spindle:0.1.0-cuda .       # NVIDIA GPUs (the chart's <tag>-cuda)
#
# The CUDA stages build llama.cpp with nvcc (`--features cuda`) and run on the
# CUDA runtime image; the host needs the NVIDIA container runtime.

# --- CUDA build and runtime (only built with --target runtime-cuda) ---------
FROM nvidia/cuda:12.6.3-devel-ubuntu22.04 AS build-cuda
RUN apt-get update -qq && apt-get install -y -qq curl ca-certificates cmake clang libclang-dev patch pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN cargo build --release --locked --features cuda && cp target/release/spindle /spindle

FROM nvidia/cuda:12.6.3-runtime-ubuntu22.04 AS runtime-cuda
RUN apt-get update -qq && apt-get install -y -qq ca-certificates libgomp1 && rm -rf /var/lib/apt/lists/*
COPY --from=build-cuda /spindle /usr/local/bin/spindle
ENV SPINDLE_HOST=0.0.0.0 SPINDLE_CACHE_DIR=/models
VOLUME /models
ENTRYPOINT ["spindle"]
CMD ["serve"]

# --- CPU build and runtime (the default: last stage) -------------------------
FROM rust:1-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq cmake clang libclang-dev patch && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/spindle /spindle

FROM debian:bookworm-slim AS runtime
RUN apt-get update -qq && apt-get install -y -qq ca-certificates libgomp1 && rm -rf /var/lib/apt/lists/*
COPY --from=build /spindle /usr/local/bin/spindle
ENV SPINDLE_HOST=0.0.0.0 SPINDLE_CACHE_DIR=/models
VOLUME /models
ENTRYPOINT ["spindle"]
CMD ["serve"]
