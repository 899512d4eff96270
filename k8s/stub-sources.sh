#!/bin/sh
# Writes empty stand-ins for every source file Cargo.toml names (the binary, the library, and each
# declared bench and example), in the current directory. The Dockerfile builds its dependency layer
# against them, so editing the sources does not rebuild the dependencies; `.ci/run` checks that the
# stubs still satisfy Cargo.toml (a bench declared without a stub fails `docker build`).
set -eu
mkdir -p src benches examples
echo 'fn main() {}' > src/main.rs
: > src/lib.rs
for bench in $(sed -n '/^\[\[bench\]\]/{n;s/^name = "\(.*\)"$/\1/p;}' Cargo.toml); do
  echo 'fn main() {}' > "benches/$bench.rs"
done
for example in $(sed -n '/^\[\[example\]\]/{n;s/^name = "\(.*\)"$/\1/p;}' Cargo.toml); do
  echo 'fn main() {}' > "examples/$example.rs"
done
