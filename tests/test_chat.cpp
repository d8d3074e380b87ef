// Chat formats and the Chat object. Each family renders a conversation as its published template
// does: the expected strings below were written by hand from the templates' text (in
// tests/data/chat_templates/, as Hugging Face publishes them). The Chat object runs on
// stories260K: later turns evaluate only their new tokens and answer as a fresh run over the
// whole conversation does.
#include <algorithm>
#include <ctime>
#include <fstream>
#include <sstream>

#include "test_support.h"

namespace {

using sllm::ChatFormat;
using sllm::ChatMessage;
using sllm::ChatRole;
using sllm::ChatTemplate;

std::string read_template(const std::string& name) {
  std::ifstream in(sllm_test::test_data("chat_templates/" + name), std::ios::binary);
  REQUIRE_MESSAGE(in.good(), name);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Two user turns and an answer, with a system message; the answer has spaces at both ends to
// show which templates trim.
const std::vector<ChatMessage> kConversation = {
    {ChatRole::kSystem, "You are a pirate."},
    {ChatRole::kUser, "Hello"},
    {ChatRole::kAssistant, " Ahoy! "},
    {ChatRole::kUser, "Who are you?"},
};

const std::vector<ChatMessage> kNoSystem(kConversation.begin() + 1, kConversation.end());

ChatFormat format(ChatTemplate family, const char* bos = "<s>", const char* eos = "</s>") {
  ChatFormat f(family);
  f.bos_text = bos;
  f.eos_text = eos;
  return f;
}

// Collects warnings sent to sllm::log while it lives.
struct CapturedLog {
  std::string text;
  CapturedLog() {
    sllm::set_log_handler([this](sllm::LogLevel level, std::string_view message) {
      if (level >= sllm::LogLevel::kWarn) text.append(message).append("\n");
    });
  }
  ~CapturedLog() { sllm::set_log_handler(nullptr); }
};

sllm::GenerateOptions greedy(int32_t max_tokens) {
  sllm::GenerateOptions o;
  o.temperature = 0;
  o.max_tokens = max_tokens;
  return o;
}

struct Answer {
  std::string text;
  sllm::ChatStats stats;
};

Answer respond(sllm::Chat& chat, const std::string& user, int32_t max_tokens) {
  chat.add(ChatRole::kUser, user);
  Answer a;
  a.stats = chat.respond(greedy(max_tokens), [&](std::string_view piece) { a.text += piece; });
  return a;
}

// What a fresh session generates after the whole conversation rendered as one prompt.
std::string from_scratch(const sllm::Model& model, const ChatFormat& f,
                         const std::vector<ChatMessage>& messages, int32_t max_tokens) {
  sllm::Session session(model);
  sllm::GenerateOptions o = greedy(max_tokens);
  o.stop = f.stop_strings();
  std::string text;
  session.generate(sllm::tokenize_chat(model.tokenizer(), f.render(messages, true)), o,
                   [&](std::string_view piece) { text += piece; });
  return text;
}

}  // namespace

TEST_CASE("each family renders a conversation as its template does") {
  struct Case {
    ChatFormat format;
    std::string expected;
  };
  const Case cases[] = {
      {format(ChatTemplate::kChatML),
       "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
       "<|im_start|>assistant\n Ahoy! <|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n"
       "<|im_start|>assistant\n"},
      {format(ChatTemplate::kLlama2),
       "<s>[INST] <<SYS>>\nYou are a pirate.\n<</SYS>>\n\nHello [/INST] Ahoy! </s>"
       "<s>[INST] Who are you? [/INST]"},
      {format(ChatTemplate::kLlama3, "<|begin_of_text|>", "<|eot_id|>"),
       "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a pirate.<|eot_id|>"
       "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
       "<|start_header_id|>assistant<|end_header_id|>\n\nAhoy!<|eot_id|>"
       "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
       "<|start_header_id|>assistant<|end_header_id|>\n\n"},
      {format(ChatTemplate::kLlama31, "<|begin_of_text|>", "<|eot_id|>"),
       "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
       "December 2023\nToday Date: 26 Jul 2024\n\nYou are a pirate.<|eot_id|>"
       "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
       "<|start_header_id|>assistant<|end_header_id|>\n\nAhoy!<|eot_id|>"
       "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
       "<|start_header_id|>assistant<|end_header_id|>\n\n"},
      {format(ChatTemplate::kPhi3, "<s>", "<|endoftext|>"),
       "<|system|>\nYou are a pirate.<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\n Ahoy! "
       "<|end|>\n<|user|>\nWho are you?<|end|>\n<|assistant|>\n"},
      {format(ChatTemplate::kGemma, "<bos>", "<eos>"),
       "<bos><start_of_turn>user\nYou are a pirate.\n\nHello<end_of_turn>\n"
       "<start_of_turn>model\nAhoy!<end_of_turn>\n<start_of_turn>user\nWho are you?<end_of_turn>\n"
       "<start_of_turn>model\n"},
      {format(ChatTemplate::kMistralLegacy),
       "<s>[INST] You are a pirate.\n\nHello [/INST] Ahoy! </s>[INST] Who are you? [/INST]"},
      {format(ChatTemplate::kMistralV1),
       "<s> [INST] You are a pirate.\n\nHello [/INST]  Ahoy! </s> [INST] Who are you? [/INST]"},
      {format(ChatTemplate::kMistralV3),
       "<s>[INST] Hello[/INST] Ahoy!</s>[INST] You are a pirate.\n\nWho are you?[/INST]"},
      {format(ChatTemplate::kMistralV3Tekken),
       "<s>[INST]Hello[/INST] Ahoy! </s>[INST]You are a pirate.\n\nWho are you?[/INST]"},
      {format(ChatTemplate::kZephyr),
       "<|system|>\nYou are a pirate.</s>\n<|user|>\nHello</s>\n<|assistant|>\n Ahoy! </s>\n"
       "<|user|>\nWho are you?</s>\n<|assistant|>\n"},
      {format(ChatTemplate::kRaw), "You are a pirate.Hello Ahoy! Who are you?"},
  };
  for (const Case& c : cases) {
    CAPTURE(sllm::chat_template_name(c.format.family));
    CHECK(c.format.render(kConversation, true) == c.expected);
  }
}

TEST_CASE("without a generation prompt, and without a system message") {
  const std::vector<ChatMessage> answered(kNoSystem.begin(), kNoSystem.begin() + 2);
  CHECK(format(ChatTemplate::kChatML).render(answered, false) ==
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n Ahoy! <|im_end|>\n");
  CHECK(format(ChatTemplate::kPhi3, "<s>", "<|endoftext|>").render(answered, false) ==
        "<|user|>\nHello<|end|>\n<|assistant|>\n Ahoy! <|end|>\n<|endoftext|>");
  CHECK(format(ChatTemplate::kZephyr).render(answered, false) ==
        "<|user|>\nHello</s>\n<|assistant|>\n Ahoy! </s>\n");
  CHECK(format(ChatTemplate::kLlama31, "<|begin_of_text|>").render({kNoSystem[0]}, true) ==
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
        "December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
  CHECK(format(ChatTemplate::kGemma, "<bos>").render(kNoSystem, true) ==
        "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nAhoy!<end_of_turn>\n"
        "<start_of_turn>user\nWho are you?<end_of_turn>\n<start_of_turn>model\n");
  CHECK(format(ChatTemplate::kMistralLegacy).render(kNoSystem, true) ==
        "<s>[INST] Hello [/INST] Ahoy! </s>[INST] Who are you? [/INST]");
}

TEST_CASE("families and their details from real templates") {
  struct Case {
    const char* file;
    ChatTemplate family;
    bool writes_bos;
    const char* default_system;
  };
  const Case cases[] = {
      {"llama-2-chat.jinja", ChatTemplate::kLlama2, true, ""},
      {"llama-3-instruct.jinja", ChatTemplate::kLlama3, true, ""},
      {"llama-3.1-instruct.jinja", ChatTemplate::kLlama31, true, ""},
      {"llama-3.2-instruct.jinja", ChatTemplate::kLlama31, true, ""},
      {"openhermes-2.5-mistral.jinja", ChatTemplate::kChatML, false, ""},
      {"qwen2-instruct.jinja", ChatTemplate::kChatML, false, "You are a helpful assistant."},
      {"qwen2.5-instruct.jinja", ChatTemplate::kChatML, false,
       "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
      {"qwen3.jinja", ChatTemplate::kChatML, false, ""},
      {"smollm2-instruct.jinja", ChatTemplate::kChatML, false,
       "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
      {"phi-3-mini-instruct.jinja", ChatTemplate::kPhi3, false, ""},
      {"phi-3.5-mini-instruct.jinja", ChatTemplate::kPhi3, false, ""},
      {"gemma-2-it.jinja", ChatTemplate::kGemma, true, ""},
      {"gemma-3-it.jinja", ChatTemplate::kGemma, true, ""},
      {"mixtral-8x7b-instruct-v0.1.jinja", ChatTemplate::kMistralLegacy, true, ""},
      {"mistral-7b-instruct-v0.1.jinja", ChatTemplate::kMistralV1, true, ""},
      {"mistral-7b-instruct-v0.3.jinja", ChatTemplate::kMistralV3, true, ""},
      {"zephyr-7b-beta.jinja", ChatTemplate::kZephyr, false, ""},
  };
  for (const Case& c : cases) {
    CAPTURE(c.file);
    const std::optional<ChatFormat> f = ChatFormat::detect(read_template(c.file));
    REQUIRE(f.has_value());
    CHECK(sllm::chat_template_name(f->family) == std::string(sllm::chat_template_name(c.family)));
    CHECK(f->writes_bos == c.writes_bos);
    CHECK(f->default_system == c.default_system);
    CHECK(f->strips_reasoning == (std::string(c.file) == "qwen3.jinja"));
  }
  CHECK_FALSE(ChatFormat::detect(read_template("openchat-3.5.jinja")).has_value());
  CHECK_FALSE(ChatFormat::detect("").has_value());
}

TEST_CASE("a template's own details change what it writes") {
  // Qwen 2 and SmolLM 2 write a system turn of their own when the conversation has none.
  ChatFormat qwen2 = *ChatFormat::detect(read_template("qwen2-instruct.jinja"));
  CHECK(qwen2.render(kNoSystem, true) ==
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello"
        "<|im_end|>\n<|im_start|>assistant\n Ahoy! <|im_end|>\n<|im_start|>user\nWho are you?"
        "<|im_end|>\n<|im_start|>assistant\n");
  CHECK(qwen2.render(kConversation, true) ==
        format(ChatTemplate::kChatML).render(kConversation, true));

  // Qwen 3 drops the reasoning of answers before the last user message and keeps it after.
  const ChatFormat qwen3 = *ChatFormat::detect(read_template("qwen3.jinja"));
  const std::vector<ChatMessage> reasoned = {
      {ChatRole::kUser, "Hello"},
      {ChatRole::kAssistant, "<think>\nArr.\n</think>\n\n Ahoy! "},
      {ChatRole::kUser, "Who are you?"},
      {ChatRole::kAssistant, "<think>\nhmm\n</think>\n\nYes."},
  };
  CHECK(qwen3.render(reasoned, false) ==
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n Ahoy! <|im_end|>\n"
        "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>"
        "\n\nYes.<|im_end|>\n");

  // Llama 3.1 and 3.3 date the system header 26 Jul 2024, Llama 3.2 with today's date.
  CHECK(ChatFormat::detect(read_template("llama-3.1-instruct.jinja"))->date == "26 Jul 2024");
  const auto today = [] {
    const std::time_t now = std::time(nullptr);
    char buf[32];
    return std::string(buf, std::strftime(buf, sizeof buf, "%d %b %Y", std::localtime(&now)));
  };
  const std::string before = today();
  const std::string date = ChatFormat::detect(read_template("llama-3.2-instruct.jinja"))->date;
  CHECK((date == before || date == today()));  // at midnight, either
}

TEST_CASE("conversations a template refuses are errors") {
  const std::vector<ChatMessage> two_users = {{ChatRole::kUser, "a"}, {ChatRole::kUser, "b"}};
  const std::vector<ChatMessage> late_system = {{ChatRole::kUser, "a"}, {ChatRole::kSystem, "b"}};
  for (ChatTemplate family : {ChatTemplate::kLlama2, ChatTemplate::kGemma, ChatTemplate::kMistralV1,
                              ChatTemplate::kMistralV3}) {
    CAPTURE(sllm::chat_template_name(family));
    CHECK(sllm_test::error_message([&] {
            format(family).render(two_users, true);
          }).find("message 2 is a user message") != std::string::npos);
    CHECK(sllm_test::error_message([&] {
            format(family).render(late_system, true);
          }).find("one system message") != std::string::npos);
  }
  // Formats with a role name in every turn take them in any order.
  CHECK(format(ChatTemplate::kChatML).render(two_users, false) ==
        "<|im_start|>user\na<|im_end|>\n<|im_start|>user\nb<|im_end|>\n");
}

TEST_CASE("names, overrides and the explicit fallback") {
  for (const char* name :
       {"chatml", "llama2", "llama3", "llama3.1", "phi3", "gemma", "mistral-legacy", "mistral-v1",
        "mistral-v3", "mistral-v3-tekken", "zephyr", "raw"}) {
    const std::optional<ChatTemplate> family = sllm::chat_template_from_name(name);
    REQUIRE_MESSAGE(family.has_value(), name);
    CHECK(sllm::chat_template_name(*family) == std::string(name));
  }
  CHECK_FALSE(sllm::chat_template_from_name("ChatML").has_value());

  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  const sllm::Tokenizer& tok = model.tokenizer();
  {
    CapturedLog log;
    const ChatFormat f = ChatFormat::choose(read_template("openchat-3.5.jinja"), tok);
    CHECK(f.family == ChatTemplate::kChatML);
    CHECK(log.text.find("no family sllm knows; using ChatML") != std::string::npos);
    CHECK(log.text.find("mistral-v3-tekken") != std::string::npos);  // the names to choose from
  }
  {
    CapturedLog log;  // stories260K has no template
    CHECK(ChatFormat::for_model(model).family == ChatTemplate::kChatML);
    CHECK(log.text.find("no chat template") != std::string::npos);
  }
  {
    CapturedLog log;
    const ChatFormat f = ChatFormat::choose(read_template("llama-3-instruct.jinja"), tok);
    CHECK(f.family == ChatTemplate::kLlama3);
    CHECK(log.text.empty());
    CHECK(f.bos_text == "<s>");  // from the tokenizer
    CHECK(f.eos_text == "</s>");
    CHECK(ChatFormat::choose(read_template("llama-3-instruct.jinja"), tok, "zephyr").family ==
          ChatTemplate::kZephyr);
    // Naming the model's own family keeps its template's details.
    CHECK(ChatFormat::choose(read_template("qwen2-instruct.jinja"), tok, "chatml").default_system ==
          "You are a helpful assistant.");
    CHECK(ChatFormat::for_model(model, "raw").family == ChatTemplate::kRaw);
    CHECK(log.text.empty());
  }
  const std::string unknown =
      sllm_test::error_message([&] { ChatFormat::for_model(model, "llama4"); });
  CHECK(unknown.find("unknown chat template 'llama4'") != std::string::npos);
  CHECK(unknown.find("chatml, llama2") != std::string::npos);
}

TEST_CASE("stop strings of each family") {
  CHECK(format(ChatTemplate::kChatML).stop_strings() ==
        std::vector<std::string>{"<|im_end|>", "<|im_start|>"});
  CHECK(format(ChatTemplate::kGemma).stop_strings() ==
        std::vector<std::string>{"<end_of_turn>", "<start_of_turn>"});
  CHECK(format(ChatTemplate::kRaw).stop_strings().empty());
}

TEST_CASE("each family's end-of-turn marker ends the answer as an end-of-generation token") {
  // A vocabulary whose only end-of-generation ids come from the markers' text (no EOS id).
  sllm::Vocabulary v;
  v.tokens = {"<unk>", "a", "</s>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"};
  v.types.assign(v.tokens.size(), sllm::TokenType::Control);
  v.types[1] = sllm::TokenType::Normal;
  v.bos = v.eos = -1;
  const sllm::Tokenizer tok(v);
  const std::pair<ChatTemplate, const char*> markers[] = {
      {ChatTemplate::kChatML, "<|im_end|>"},   {ChatTemplate::kLlama3, "<|eot_id|>"},
      {ChatTemplate::kLlama31, "<|eot_id|>"},  {ChatTemplate::kPhi3, "<|end|>"},
      {ChatTemplate::kGemma, "<end_of_turn>"}, {ChatTemplate::kLlama2, "</s>"},
      {ChatTemplate::kMistralV3, "</s>"},      {ChatTemplate::kZephyr, "</s>"},
  };
  for (const auto& [family, marker] : markers) {
    CAPTURE(sllm::chat_template_name(family));
    // The marker closes a turn in the family's own rendering...
    const std::string text =
        format(family).render({{ChatRole::kUser, "a"}, {ChatRole::kAssistant, "a"}}, false);
    CHECK(text.find(marker) != std::string::npos);
    // ...and as a token it ends generation.
    CHECK(tok.is_eog(tok.find_piece(marker)));
  }
  CHECK_FALSE(tok.is_eog(tok.find_piece("a")));
}

TEST_CASE("BOS once, whether the template writes it or the tokenizer adds it") {
  const std::string path = sllm_test::fixture("vocab/ggml-vocab-phi-3.gguf");
  if (path.empty()) return;
  const sllm::Gguf gguf = sllm::Gguf::open(path);
  const sllm::Tokenizer tok = sllm::Tokenizer::from_gguf(gguf);
  REQUIRE(tok.add_bos());
  const int32_t bos = tok.bos();
  const auto count = [&](const std::vector<int32_t>& ids, int32_t id) {
    return std::count(ids.begin(), ids.end(), id);
  };

  // This file's template is Phi-3's first one, which writes bos_token itself.
  const ChatFormat phi3 = ChatFormat::choose(gguf.get<std::string>("tokenizer.chat_template"), tok);
  CHECK(phi3.family == ChatTemplate::kPhi3);
  REQUIRE(phi3.writes_bos);
  const std::string text = phi3.render(kNoSystem, true);
  CHECK(text.rfind("<s><|user|>\nHello<|end|>\n", 0) == 0);
  std::vector<int32_t> ids = sllm::tokenize_chat(tok, text);
  CHECK(ids[0] == bos);
  CHECK(count(ids, bos) == 1);
  // The markers are single control tokens.
  CHECK(count(ids, tok.find_piece("<|user|>")) == 2);
  CHECK(count(ids, tok.find_piece("<|assistant|>")) == 2);
  CHECK(count(ids, tok.find_piece("<|end|>")) == 3);

  // Zephyr's template writes none: the tokenizer's BOS is added, once.
  ids = sllm::tokenize_chat(tok, format(ChatTemplate::kZephyr).render(kNoSystem, true));
  CHECK(ids[0] == bos);
  CHECK(count(ids, bos) == 1);

  // Llama 2's writes one before each user turn.
  ids = sllm::tokenize_chat(tok, format(ChatTemplate::kLlama2).render(kConversation, true));
  CHECK(ids[0] == bos);
  CHECK(count(ids, bos) == 2);
}

TEST_CASE("each turn evaluates only its new tokens and answers as a fresh run would") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::Session session(model);
  // stories260K has no chat template; "raw" writes the conversation as one running story.
  const ChatFormat raw = ChatFormat::for_model(model, "raw");
  sllm::Chat chat(session, raw);

  const Answer first = respond(chat, "Once upon a time", 24);
  CHECK(first.stats.n_cached == 0);
  CHECK(first.stats.n_prompt == sllm::tokenize_chat(model.tokenizer(), "Once upon a time").size());
  CHECK(first.stats.n_generated == 24);
  CHECK(first.text == from_scratch(model, raw, {{ChatRole::kUser, "Once upon a time"}}, 24));
  REQUIRE(chat.messages().size() == 2);
  CHECK(chat.messages()[1].role == ChatRole::kAssistant);
  CHECK(chat.messages()[1].content == first.text);

  const size_t n_past = session.n_past();
  chat.add(ChatRole::kUser, " Lily");
  const std::vector<int32_t> tokens =
      sllm::tokenize_chat(model.tokenizer(), raw.render(chat.messages(), true));
  size_t n_past_at_first_piece = 0;
  Answer second;
  second.stats = chat.respond(greedy(24), [&](std::string_view piece) {
    if (second.text.empty()) n_past_at_first_piece = session.n_past();
    second.text += piece;
  });
  // All of the first turn stayed in the context; only the new tokens were evaluated.
  CHECK(second.stats.n_cached == n_past);
  CHECK(second.stats.n_prompt == tokens.size() - n_past);
  CHECK(n_past_at_first_piece == tokens.size());
  CHECK(second.text ==
        from_scratch(model, raw,
                     std::vector<ChatMessage>(chat.messages().begin(), chat.messages().end() - 1),
                     24));

  // reset() forgets the conversation: the first answer again.
  chat.reset();
  CHECK(chat.messages().empty());
  CHECK(session.n_past() == 0);
  CHECK(respond(chat, "Once upon a time", 24).text == first.text);
}

TEST_CASE("a conversation the template rewrites is recomputed from where it changed") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::Session session(model);
  // Mistral v0.3 writes the system message into the last user turn, so the second turn's
  // rendering differs from the first's right after the first "[INST] ".
  const ChatFormat mistral = ChatFormat::for_model(model, "mistral-v3");
  sllm::Chat chat(session, mistral);
  chat.add(ChatRole::kSystem, "Tell a story.");
  respond(chat, "Lily and Tom", 16);
  const std::vector<int32_t> before = session.tokens();

  chat.add(ChatRole::kUser, "The dog");
  const std::vector<int32_t> tokens =
      sllm::tokenize_chat(model.tokenizer(), mistral.render(chat.messages(), true));
  const size_t common =
      size_t(std::mismatch(before.begin(), before.end(), tokens.begin(), tokens.end()).first -
             before.begin());
  REQUIRE(common < before.size());
  std::string text;
  const sllm::ChatStats stats =
      chat.respond(greedy(16), [&](std::string_view piece) { text += piece; });
  CHECK(stats.n_cached == common);
  CHECK(stats.n_prompt == tokens.size() - common);
  CHECK(text ==
        from_scratch(model, mistral,
                     std::vector<ChatMessage>(chat.messages().begin(), chat.messages().end() - 1),
                     16));
}

TEST_CASE("respond: needs a user message, stops when cancelled, refuses what cannot fit") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::SessionOptions so;
  so.n_ctx = 32;
  sllm::Session session(model, so);
  sllm::Chat chat(session, ChatFormat::for_model(model, "raw"));
  CHECK(sllm_test::error_message([&] {
          chat.respond(greedy(4), [](std::string_view) {});
        }).find("user message") != std::string::npos);

  // Cancelled before the first token: the prompt is in the context, the answer is empty.
  const std::atomic<bool> cancel{true};
  sllm::GenerateOptions o = greedy(8);
  o.cancel = &cancel;
  chat.add(ChatRole::kUser, "Once upon a time");
  const sllm::ChatStats stats = chat.respond(o, [](std::string_view) { FAIL("a piece"); });
  CHECK(stats.stop_reason == sllm::StopReason::kCancelled);
  CHECK(stats.n_generated == 0);
  CHECK(session.n_past() == stats.n_prompt);
  REQUIRE(chat.messages().size() == 2);
  CHECK(chat.messages()[1].content.empty());

  // A conversation longer than the context: an error, and nothing changes.
  chat.add(ChatRole::kUser,
           " Lily and Tom went to the park to play with a ball, and they ran "
           "and ran until the sun went down over the hill.");
  const size_t n_past = session.n_past();
  CHECK(sllm_test::error_message([&] {
          chat.respond(greedy(4), [](std::string_view) {});
        }).find("the context holds 32") != std::string::npos);
  CHECK(chat.messages().size() == 3);
  CHECK(session.n_past() == n_past);

  // Stop strings of the options end the answer too.
  chat.reset();
  const std::string full = respond(chat, "Once upon a time", 24).text;
  const size_t cut = full.find(' ', full.size() / 2);
  REQUIRE(cut != std::string::npos);
  const std::string stop_at = full.substr(cut, 4);
  chat.reset();
  chat.add(ChatRole::kUser, "Once upon a time");
  sllm::GenerateOptions with_stop = greedy(24);
  with_stop.stop = {stop_at};
  std::string text;
  CHECK(chat.respond(with_stop, [&](std::string_view piece) { text += piece; }).stop_reason ==
        sllm::StopReason::kStopString);
  CHECK(text == full.substr(0, full.find(stop_at)));
}
