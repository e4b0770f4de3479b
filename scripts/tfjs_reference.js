// Independent reference for our torch port of Human's 112x112 face embedders (TF.js graph models).
//
// Runs the original model.json + .bin with the pure-JavaScript TF.js CPU backend (no native code, no
// network) on deterministic synthetic 112x112x3 inputs and prints JSON with the outputs; the tests
// compare tests/data/<model>_tfjs_reference.json (this script's output) with our port.
// Each case feeds the 0..255 image times `scale` plus `offset` (arguments SCALE:OFFSET; default the
// two cases 1:0 and 1/255:0).
//
// Usage (from a folder where `npm install @tensorflow/tfjs@4.22.0` was run, NODE_PATH pointing at its node_modules):
//   node scripts/tfjs_reference.js /path/to/models/mobileface.json > tests/data/mobileface_tfjs_reference.json
//   node scripts/tfjs_reference.js /path/to/models/mobilefacenet.json 0.0078125:-0.99609375 1:0 \
//     > tests/data/mobilefacenet_tfjs_reference.json
'use strict';
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

// xorshift32: exact integer arithmetic, reproduced bit for bit by the Python test.
function* xorshift32(seed) {
  let s = seed >>> 0;
  for (;;) {
    s ^= (s << 13) >>> 0; s >>>= 0;
    s ^= s >>> 17;
    s ^= (s << 5) >>> 0; s >>>= 0;
    yield s;
  }
}

// Blocky pattern (14x14 cells of 8 px) plus fine noise, integers 0..255, NHWC (112, 112, 3).
function syntheticImage(seed) {
  const rng = xorshift32(seed);
  const coarse = new Array(14 * 14 * 3);
  for (let i = 0; i < coarse.length; i++) coarse[i] = rng.next().value % 256;
  const out = new Float32Array(112 * 112 * 3);
  for (let y = 0; y < 112; y++) {
    for (let x = 0; x < 112; x++) {
      for (let c = 0; c < 3; c++) {
        const fine = rng.next().value % 33;
        const v = coarse[((y >> 3) * 14 + (x >> 3)) * 3 + c] + fine - 16;
        out[(y * 112 + x) * 3 + c] = Math.min(255, Math.max(0, v));
      }
    }
  }
  return out;
}

async function main() {
  const jsonPath = process.argv[2];
  const modelJson = JSON.parse(fs.readFileSync(jsonPath, 'utf8'));
  const buffers = modelJson.weightsManifest.flatMap((g) => g.paths.map((p) => fs.readFileSync(path.join(path.dirname(jsonPath), p))));
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const handler = tf.io.fromMemory({
    modelTopology: modelJson.modelTopology,
    weightSpecs: modelJson.weightsManifest.flatMap((g) => g.weights),
    weightData,
  });
  await tf.setBackend('cpu');
  const model = await tf.loadGraphModel(handler);
  const seeds = [1, 2];
  const images = seeds.map(syntheticImage);
  const batch = tf.tensor4d(Float32Array.from(images.flatMap((a) => Array.from(a))), [seeds.length, 112, 112, 3]);
  const specs = process.argv.length > 3 ? process.argv.slice(3) : ['1:0', `${1 / 255}:0`];
  const cases = [];
  for (const spec of specs) {
    const [scale, offset] = spec.split(':').map(Number);
    const out = model.execute(tf.add(tf.mul(batch, scale), offset));
    cases.push({ seeds, scale, offset, output: await out.array() });
  }
  process.stdout.write(JSON.stringify({
    generator: 'scripts/tfjs_reference.js',
    tfjs: tf.version.tfjs,
    backend: tf.getBackend(),
    model: path.basename(jsonPath),
    input: 'xorshift32 blocky image, NHWC (N,112,112,3), values 0..255 times scale plus offset',
    cases,
  }) + '\n');
}

main().catch((err) => { console.error(err); process.exit(1); });
