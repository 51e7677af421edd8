package models

import (
	"fmt"
	"strings"
)

// Token types as llama.cpp reads them from tokenizer.ggml.token_type.
const (
	tokNormal  int32 = 1
	tokUnknown int32 = 2
	tokControl int32 = 3
	tokUser    int32 = 4 // user-defined: llama.cpp matches these even with special parsing off
	tokByte    int32 = 6
)

// Ids of the special tokens in every synthetic vocabulary. As in ChatML
// models, <|im_end|> is the end-of-sequence token; </s> is only a control token.
const (
	UnkID     = 0
	BOSID     = 1
	ImStartID = 259 // <|im_start|>
	ImEndID   = 260 // <|im_end|>, the end-of-sequence token
)

// spmSpace is SentencePiece's visible space, which llama.cpp's SPM tokenizer
// substitutes for ' ' (and prepends to the text).
const spmSpace = "\u2581"

// ChatMLTemplate is the chat template written into synthetic models.
// llama.cpp recognises it as "chatml".
const ChatMLTemplate = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

// commonHan are frequent Chinese characters plus those of banking and
// compliance vocabulary; they get their own tokens, the rest of CJK goes
// through byte fallback.
const commonHan = "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以会可里后自之过去" +
	"家小多然于心学么都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日手又行意动方期它头经长儿回位分爱老因很给名法间斯知世什两次使身者被高已亲其进此话常与活正感" +
	"银账户金融风险交易洗钱客资转利率贷款信卡余额理财合规监管报告审计可疑大额现跨境汇外币存取支付结算清算对公私司企业个体收入负债比征查询次数过多行业系上升规则触发评分等级模型贡献度" +
	"请问您好谢再见帮助办申开通关闭冻解密码手机号码身份证件地址邮箱网点营时电话服务投诉建议产品保险基股票债券市场分析研究"

// commonWords are English pieces that get whole-word tokens (with all their
// prefixes, so that SentencePiece merges can reach them).
var commonWords = strings.Fields(`the of and to in is that for it as was with be by on not he this are or his from at which but
have an they you were her she there all one their has been would will more if no out so said what up its about than into them can only
other new some could time these two may then do first any my now such like our over man me even most made after also did many before
must through back years where much your way well down should because each just those people how too little state good very make world
still own see men work long get here between both life being under never day same another know while last might us great old year off
come since against go came right used take three account bank money loan credit card transfer payment balance fund risk customer
report rule score model compliance transaction cash wire deposit withdraw interest rate suspicious review alert case income debt
please thank hello help service branch phone address email password open close freeze limit fee charge statement yes`)

// Vocab is a SentencePiece-style vocabulary with byte fallback.
type Vocab struct {
	Tokens []string
	Scores []float32
	Types  []int32
}

// BuildVocab returns a deterministic vocabulary of exactly size tokens
// (size >= 300): the special tokens, 256 byte tokens so that any UTF-8
// text tokenizes, the ChatML control tokens, then pieces in priority order:
// ASCII, common words, common Chinese characters and word pairs, and
// letter n-grams to fill the rest.
func BuildVocab(size int) (*Vocab, error) { return buildVocab(size, false, nil) }

// buildVocab is BuildVocab; userMarkers types the ChatML markers
// user-defined instead of control, as gpt-oss and others type their turn
// markers.
func buildVocab(size int, userMarkers bool, control []string) (*Vocab, error) {
	if size < 300 {
		return nil, fmt.Errorf("vocabulary of %d tokens is too small (minimum 300)", size)
	}
	v := &Vocab{}
	seen := map[string]bool{}
	add := func(piece string, typ int32) bool {
		if len(v.Tokens) >= size || seen[piece] {
			return len(v.Tokens) < size
		}
		seen[piece] = true
		v.Tokens = append(v.Tokens, piece)
		v.Types = append(v.Types, typ)
		// SentencePiece scores: earlier pieces are preferred merges.
		v.Scores = append(v.Scores, -float32(len(v.Tokens)))
		return true
	}
	add("<unk>", tokUnknown)
	add("<s>", tokControl)
	add("</s>", tokControl)
	for b := 0; b < 256; b++ {
		add(fmt.Sprintf("<0x%02X>", b), tokByte)
	}
	marker := tokControl
	if userMarkers {
		marker = tokUser
	}
	add("<|im_start|>", marker)
	add("<|im_end|>", marker)
	for _, c := range control {
		add(c, tokControl)
	}
	for i := range v.Scores { // specials and bytes never win a merge
		v.Scores[i] = 0
	}

	// withPrefixes adds every prefix of piece (by rune), so each piece is
	// reachable by the tokenizer's pairwise merges.
	withPrefixes := func(piece string) bool {
		r := []rune(piece)
		for i := 1; i <= len(r); i++ {
			if !add(string(r[:i]), tokNormal) {
				return false
			}
		}
		return true
	}
	var pieces []string
	pieces = append(pieces, spmSpace)
	for c := byte(33); c < 127; c++ {
		pieces = append(pieces, string(c))
	}
	for c := 'a'; c <= 'z'; c++ {
		pieces = append(pieces, spmSpace+string(c))
	}
	for c := 'A'; c <= 'Z'; c++ {
		pieces = append(pieces, spmSpace+string(c))
	}
	for c := '0'; c <= '9'; c++ {
		pieces = append(pieces, spmSpace+string(c))
	}
	for _, w := range commonWords {
		pieces = append(pieces, spmSpace+w)
	}
	han := []rune(commonHan)
	for _, r := range han {
		pieces = append(pieces, string(r))
	}
	for i := 0; i+1 < len(han); i += 2 {
		pieces = append(pieces, string(han[i:i+2]))
	}
	for _, p := range pieces {
		if !withPrefixes(p) {
			return v, nil
		}
	}
	// Fill with letter bigrams, then trigrams, with and without a leading space.
	letters := "etaoinshrdlcumwfgypbvkjxqz"
	for _, a := range letters {
		for _, b := range letters {
			if !add(string(a)+string(b), tokNormal) || !add(spmSpace+string(a)+string(b), tokNormal) {
				return v, nil
			}
		}
	}
	for _, a := range letters {
		for _, b := range letters {
			for _, c := range letters {
				if !add(string(a)+string(b)+string(c), tokNormal) || !add(spmSpace+string(a)+string(b)+string(c), tokNormal) {
					return v, nil
				}
			}
		}
	}
	if len(v.Tokens) < size {
		return nil, fmt.Errorf("vocabulary generator ran out of pieces at %d tokens (asked for %d)", len(v.Tokens), size)
	}
	return v, nil
}
