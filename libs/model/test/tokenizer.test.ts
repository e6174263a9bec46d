import { describe, expect, it } from 'vitest';
import { PromptTokenizer, seededTokenizerJson } from '../src/tokenizer';

/**
 * A umT5-shaped tokenizer.json small enough to segment by hand: pad 0, </s> 1, <unk> 2, a
 * Metaspace pre-tokenizer (a '▁' before each word), a Unigram model, `</s>` appended.
 */
function handTokenizer(): Record<string, unknown> {
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const json = seededTokenizerJson(512);
  return {
    ...json,
    added_tokens: [special(0, '<pad>'), special(1, '</s>'), special(2, '<unk>')],
    model: {
      type: 'Unigram',
      unk_id: 2,
      byte_fallback: false,
      vocab: [
        ['<pad>', 0], // 0
        ['</s>', 0], // 1
        ['<unk>', 0], // 2
        ['▁', -4], // 3
        ['▁a', -2], // 4
        ['▁red', -2], // 5
        ['▁fox', -2], // 6
        ['▁b', -3], // 7
        ['oat', -3], // 8
        ['▁bo', -2.5], // 9
        ['at', -2.5], // 10
      ],
    },
  };
}

describe('PromptTokenizer', () => {
  const tok = new PromptTokenizer(handTokenizer(), null, 6, 512);

  it('gives the Viterbi segmentation and appends </s>', () => {
    // "a red fox" -> ▁a ▁red ▁fox: each word is one piece.
    expect(tok.tokenize('a red fox').ids).toEqual([4, 5, 6, 1]);
    // "boat": ▁bo + at scores -2.5 + -2.5 = -5, better than ▁b + oat = -3 + -3 = -6.
    expect(tok.tokenize('a boat').ids).toEqual([4, 9, 10, 1]);
  });

  it('collapses whitespace and applies NFKC as umT5 does', () => {
    expect(tok.tokenize('  a \t red\n\nfox ').ids).toEqual([4, 5, 6, 1]);
    // Fullwidth 'ａ' (U+FF41) is 'a' after NFKC.
    expect(tok.tokenize('\uff41 red').ids).toEqual([4, 5, 1]);
  });

  it('maps a character outside the vocabulary to <unk>', () => {
    // "a ✓": ▁a, then "▁✓" = ▁ (3) followed by the unknown ✓ (2).
    expect(tok.tokenize('a ✓').ids).toEqual([4, 3, 2, 1]);
  });

  it('encodes the empty prompt as just </s>, the unconditional input', () => {
    const t = tok.tokenize('');
    expect(t.ids).toEqual([1]);
    expect([...t.attentionMask]).toEqual([1, 0, 0, 0, 0, 0]);
    expect(t.truncated).toBe(0);
  });

  it('keeps at most textLen tokens, the end token included, and reports how many it dropped', () => {
    // 7 word tokens with room for 5 plus </s>.
    const t = tok.tokenize('a red fox a red fox a');
    expect(t.ids).toEqual([4, 5, 6, 4, 5, 1]);
    expect(t.truncated).toBe(2);
    expect([...t.attentionMask]).toEqual([1, 1, 1, 1, 1, 1]);
    const fits = tok.tokenize('a red fox a red');
    expect(fits.ids).toEqual([4, 5, 6, 4, 5, 1]);
    expect(fits.truncated).toBe(0);
  });

  it('refuses a tokenizer that is not Unigram or whose ids do not fit the embedding', () => {
    expect(() => new PromptTokenizer({ ...handTokenizer(), model: { type: 'BPE', vocab: {}, merges: [] } }, null, 6, 512)).toThrow(/tokenizer\/tokenizer\.json: model type "BPE" is not supported/);
    expect(() => new PromptTokenizer(handTokenizer(), null, 6, 8)).toThrow(/tokenizer\/tokenizer\.json: token '.*' has id (8|9|10), outside the text encoder's 8-row embedding/);
  });

  it('segments ordinary words of the seeded tokenizer as whole words', () => {
    const seeded = new PromptTokenizer(seededTokenizerJson(512), null, 16, 512);
    const json = seededTokenizerJson(512) as { model: { vocab: [string, number][] } };
    const id = (piece: string) => json.model.vocab.findIndex(([p]) => p === piece);
    expect(seeded.tokenize('a paper boat').ids).toEqual([id('▁a'), id('▁paper'), id('▁boat'), 1]);
    // An unknown word falls back to letters: ▁z, i, p.
    expect(seeded.tokenize('zip').ids).toEqual([id('▁z'), id('i'), id('p'), 1]);
  });
});
