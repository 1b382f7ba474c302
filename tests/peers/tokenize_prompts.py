"""Tokenize prompts as mergekit-moe does (the BOS token's text, then the prompt, no other special tokens), with
transformers' AutoTokenizer; optionally save the tokenizer (transformers writes tokenizer.json) first.

Usage: python tokenize_prompts.py TOKENIZER_DIR PROMPTS_JSON [SAVE_DIR]
Prints JSON: each prompt's token ids.
"""
import json, sys
import transformers

def main(path, prompts, save=None):
    tok = transformers.AutoTokenizer.from_pretrained(path)
    if save: tok.save_pretrained(save)
    print(json.dumps([tok([(tok.bos_token or '') + p], add_special_tokens=False)['input_ids'][0] for p in prompts]))

if __name__ == '__main__': main(sys.argv[1], json.loads(sys.argv[2]), *sys.argv[3:])
