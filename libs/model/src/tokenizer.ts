/**
 * The prompt tokenizer of a pipeline directory: its `tokenizer/tokenizer.json` (a Hugging Face
 * `tokenizers` file; umT5's is a Unigram model) run by @huggingface/tokenizers, with Wan's rules
 * on top: whitespace runs collapsed and the ends trimmed (Wan's 'whitespace' clean), the
 * post-processor's `</s>` appended, at most textLen tokens (the end token survives truncation, as
 * with transformers' `truncation=True`), and an attention mask over the real tokens.
 *
 * Also builds the small Unigram tokenizer.json that `longshot model write` puts in a seeded
 * pipeline. Pure: the caller reads the file.
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { PipelineError, TOKENIZER_FILE } from './pipeline-config';

export interface PromptTokens {
  /** Token ids, the end token included; at most textLen of them. */
  readonly ids: readonly number[];
  /** textLen entries: 1 for each id, 0 for the padding after them. */
  readonly attentionMask: Uint8Array;
  /** Tokens cut off because the prompt was longer than textLen (0 when it fit). */
  readonly truncated: number;
}

export class PromptTokenizer {
  private readonly tokenizer: Tokenizer;
  private readonly specialTokens: number;

  /** `json` is the parsed tokenizer.json; `config` the parsed tokenizer_config.json, if any. */
  constructor(
    json: Record<string, unknown>,
    config: Record<string, unknown> | null,
    readonly textLen: number,
    readonly vocabLimit: number,
  ) {
    const model = json.model as { type?: unknown } | undefined;
    if (!model || model.type !== 'Unigram') throw new PipelineError(`${TOKENIZER_FILE}: model type ${JSON.stringify(model?.type)} is not supported (umT5's tokenizer is Unigram)`);
    try {
      this.tokenizer = new Tokenizer(json, config ?? {});
    } catch (e) {
      throw new PipelineError(`${TOKENIZER_FILE}: ${(e as Error).message}`);
    }
    if (!Number.isInteger(textLen) || textLen < 2) throw new PipelineError(`${TOKENIZER_FILE}: text length ${textLen} leaves no room for a token and the end token`);
    // What the post-processor adds around a sequence (umT5: just `</s>`).
    this.specialTokens = this.tokenizer.encode('', { add_special_tokens: true }).ids.length;
    const vocab = this.tokenizer.get_vocab(true);
    for (const [piece, id] of vocab) {
      if (!Number.isInteger(id) || id < 0 || id >= vocabLimit) {
        throw new PipelineError(`${TOKENIZER_FILE}: token '${piece}' has id ${id}, outside the text encoder's ${vocabLimit}-row embedding`);
      }
    }
  }

  tokenize(prompt: string): PromptTokens {
    // Wan cleans prompts with ftfy, HTML unescaping and whitespace collapsing before tokenizing;
    // the whitespace step is the one that changes tokens for ordinary prompts.
    const clean = prompt.replace(/\s+/gu, ' ').trim();
    const content = this.tokenizer.encode(clean, { add_special_tokens: false }).tokens;
    const room = this.textLen - this.specialTokens;
    const kept = content.slice(0, room);
    const processed = this.tokenizer.post_processor ? this.tokenizer.post_processor(kept, null, true).tokens : kept;
    const ids = processed.map((t) => {
      const id = this.tokenizer.token_to_id(t);
      // A piece the vocabulary lacks is what the model's unk id stands for (the library keeps
      // the raw text as the token string and maps it to unk only in encode's ids).
      return id ?? this.unkId();
    });
    const attentionMask = new Uint8Array(this.textLen);
    attentionMask.fill(1, 0, ids.length);
    return { ids, attentionMask, truncated: content.length - kept.length };
  }

  private unkId(): number {
    const id = this.tokenizer.model?.unk_token_id;
    if (id === undefined) throw new PipelineError(`${TOKENIZER_FILE}: prompt has a character outside the vocabulary and the model has no unk_id`);
    return id;
  }
}

// ---------------------------------------------------------------------------------------------
// The seeded tokenizer.json

/** umT5's special tokens and their ids. */
export const UMT5_SPECIAL = { pad: 0, eos: 1, unk: 2 } as const;

const METASPACE = '\u2581';

/** Frequent English words: whole-word pieces, so ordinary prompts get word-sized tokens. */
const WORDS = (
  'a an the of and in on at to with from by for is are was as it its this that over under into through ' +
  'red orange yellow green blue purple black white gray golden silver dark bright light ' +
  'cat dog fox bird fish horse boat ship car train city street road river sea ocean lake forest tree trees mountain ' +
  'sky sun moon star stars cloud clouds rain snow wind fire water night day dawn dusk sunset sunrise ' +
  'man woman child people person girl boy face hand eyes ' +
  'walking running flying drifting swimming dancing sitting standing slowly quickly camera shot close up wide ' +
  'paper small large old new little big beautiful cinematic video scene view'
).split(' ');

/** Subword pieces (no leading ▁) that let unseen words split into something better than letters. */
const SUFFIXES = ['ing', 'ed', 'er', 'est', 'ly', 's', 'es', 'tion', 'al', 'y', 'en', 'ness'];

/**
 * A small Unigram tokenizer.json laid out like umT5's (pad 0, `</s>` 1, `<unk>` 2; a Metaspace
 * pre-tokenizer; `</s>` appended by a TemplateProcessing post-processor; Metaspace decoder).
 *
 * Normaliser: umT5's tokenizer.json uses a `Precompiled` normaliser, a binary character map
 * compiled from the SentencePiece model (nmt_nfkc: NFKC plus control-character removal and
 * whitespace folding) followed by collapsing runs of spaces. That charsmap cannot be regenerated
 * without the original SentencePiece model, so the seeded file spells the same rules out as a
 * `Sequence` of NFKC, a Replace that drops control characters, a Replace that turns other
 * whitespace into a space, and a Replace that collapses runs of spaces.
 *
 * Scores are log-probability-like: whole words beat subword pieces, which beat letters, so the
 * Viterbi segmentation of an ordinary word is the word itself.
 */
export function seededTokenizerJson(vocabLimit: number): Record<string, unknown> {
  const pieces = new UnigramPieces();
  WORDS.forEach((w, i) => pieces.add(METASPACE + w, -6 - i * 0.001));
  SUFFIXES.forEach((s, i) => pieces.add(s, -8 - i * 0.001));
  const chars = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?\'"-:;()';
  [...chars].forEach((c, i) => {
    pieces.add(METASPACE + c, -11 - i * 0.001);
    pieces.add(c, -10 - i * 0.001);
  });
  return unigramTokenizerJson(pieces.list, vocabLimit);
}

/**
 * A closed-vocabulary tokenizer.json of the same layout: the special tokens, then one whole-word
 * piece per word and nothing else, so any other word (or a word with other characters) becomes
 * `<unk>`. The trained pipeline's grammar uses it (apps/trainer).
 */
export function vocabularyTokenizerJson(words: readonly string[], vocabLimit: number): Record<string, unknown> {
  const pieces = new UnigramPieces();
  words.forEach((w, i) => {
    if (!/^\S+$/u.test(w)) throw new Error(`vocabulary tokenizer: '${w}' is not one word`);
    pieces.add(METASPACE + w, -6 - i * 0.001);
  });
  return unigramTokenizerJson(pieces.list, vocabLimit);
}

/** Unigram pieces in id order: umT5's specials first, then each new piece once. */
class UnigramPieces {
  readonly list: [string, number][] = [
    ['<pad>', 0],
    ['</s>', 0],
    ['<unk>', 0],
    [METASPACE, -3],
  ];
  private readonly seen = new Set(this.list.map((p) => p[0]));

  add(piece: string, score: number): void {
    if (!this.seen.has(piece)) {
      this.seen.add(piece);
      this.list.push([piece, score]);
    }
  }
}

function unigramTokenizerJson(pieces: readonly [string, number][], vocabLimit: number): Record<string, unknown> {
  if (pieces.length > vocabLimit) throw new Error(`seeded tokenizer: ${pieces.length} pieces do not fit a ${vocabLimit}-row embedding`);
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(UMT5_SPECIAL.pad, '<pad>'), special(UMT5_SPECIAL.eos, '</s>'), special(UMT5_SPECIAL.unk, '<unk>')],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'NFKC' },
        { type: 'Replace', pattern: { Regex: '[\\u0000-\\u0008\\u000B\\u000E-\\u001F\\u007F\\u008F\\u009F]' }, content: '' },
        { type: 'Replace', pattern: { Regex: '[\\t\\n\\f\\r\\u00A0\\u1680\\u2000-\\u200F\\u2028\\u2029\\u202F\\u205F\\u3000\\uFEFF]' }, content: ' ' },
        { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' },
      ],
    },
    pre_tokenizer: { type: 'Metaspace', replacement: METASPACE, prepend_scheme: 'always', split: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }, { Sequence: { id: 'B', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      special_tokens: { '</s>': { id: '</s>', ids: [UMT5_SPECIAL.eos], tokens: ['</s>'] } },
    },
    decoder: { type: 'Metaspace', replacement: METASPACE, prepend_scheme: 'always', split: true },
    model: { type: 'Unigram', unk_id: UMT5_SPECIAL.unk, vocab: pieces, byte_fallback: false },
  };
}

/** tokenizer_config.json for a seeded pipeline: T5TokenizerFast, its special tokens, the text length. */
export function seededTokenizerConfigJson(textLen: number): Record<string, unknown> {
  return {
    tokenizer_class: 'T5Tokenizer',
    eos_token: '</s>',
    pad_token: '<pad>',
    unk_token: '<unk>',
    model_max_length: textLen,
    extra_ids: 0,
    clean_up_tokenization_spaces: true,
  };
}
