// Mean Llama 3 token counts of each list of texts in a JSON file ({"name": [text, ...], ...}), printed as JSON.
// Llama 3's own tokenizer, offline: npm install llama3-tokenizer-js; node llama3_token_counts.mjs texts.json
import llama3Tokenizer from 'llama3-tokenizer-js'
import fs from 'fs'

const texts = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
const mean = xs => xs.reduce((a, b) => a + b, 0) / xs.length
const counts = {}
for (const [name, xs] of Object.entries(texts))
  counts[name] = mean(xs.map(x => llama3Tokenizer.encode(x, { bos: false, eos: false }).length))
console.log(JSON.stringify(counts))
