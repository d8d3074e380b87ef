#include <ctime>

namespace sllm {

namespace detail {

struct ChatTemplateInfo {
  ChatTemplate family;
  const char* name;
  bool writes_bos;  // the family's best-known template writes bos_token
};

constexpr ChatTemplateInfo kChatTemplates[] = {
    {ChatTemplate::kChatML, "chatml", false},
    {ChatTemplate::kLlama2, "llama2", true},
    {ChatTemplate::kLlama3, "llama3", true},
    {ChatTemplate::kLlama31, "llama3.1", true},
    {ChatTemplate::kPhi3, "phi3", false},
    {ChatTemplate::kGemma, "gemma", true},
    {ChatTemplate::kMistralLegacy, "mistral-legacy", true},
    {ChatTemplate::kMistralV1, "mistral-v1", true},
    {ChatTemplate::kMistralV3, "mistral-v3", true},
    {ChatTemplate::kMistralV3Tekken, "mistral-v3-tekken", true},
    {ChatTemplate::kZephyr, "zephyr", false},
    {ChatTemplate::kRaw, "raw", false},
};

inline const ChatTemplateInfo& chat_template_info(ChatTemplate family) {
  for (const ChatTemplateInfo& t : kChatTemplates) {
    if (t.family == family) return t;
  }
  fail("chat template family " + std::to_string(int(family)) + " does not exist");
}

// Jinja's trim is Python's str.strip(): whitespace at both ends (ASCII here; Python also strips
// Unicode spaces such as U+00A0, which chat messages rarely end with).
inline bool is_strip_space(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
}

inline std::string strip(std::string_view s) {
  size_t begin = 0, end = s.size();
  while (begin < end && is_strip_space(s[begin])) ++begin;
  while (end > begin && is_strip_space(s[end - 1])) --end;
  return std::string(s.substr(begin, end - begin));
}

// Python's s.strip(chars) family for one character.
inline std::string_view lstrip_char(std::string_view s, char c) {
  while (!s.empty() && s.front() == c) s.remove_prefix(1);
  return s;
}
inline std::string_view rstrip_char(std::string_view s, char c) {
  while (!s.empty() && s.back() == c) s.remove_suffix(1);
  return s;
}

// The text of a Jinja string literal's body (Python escapes).
inline std::string jinja_unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
  }
  return out;
}

// The system turn a ChatML template writes when the conversation has none (Qwen 2, 2.5, SmolLM
// 2): a string literal '<|im_start|>system\nTEXT<|im_end|>...' whose TEXT is written out, not
// an expression such as messages[0]['content'].
inline std::string chatml_default_system(std::string_view jinja) {
  const std::string_view start = "<|im_start|>system";
  for (size_t at = jinja.find(start); at != std::string_view::npos;
       at = jinja.find(start, at + 1)) {
    if (at == 0 || (jinja[at - 1] != '\'' && jinja[at - 1] != '"')) continue;
    const char quote = jinja[at - 1];
    size_t p = at + start.size();
    if (jinja.compare(p, 2, "\\n") == 0) {
      p += 2;
    } else if (p < jinja.size() && jinja[p] == '\n') {
      p += 1;
    } else {
      continue;
    }
    const size_t end = jinja.find("<|im_end|>", p);
    if (end == std::string_view::npos || end == p) continue;
    const std::string_view text = jinja.substr(p, end - p);
    bool closed = false;  // the literal ends before <|im_end|>: TEXT is not all written out
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '\\') {
        ++i;
      } else if (text[i] == quote) {
        closed = true;
      }
    }
    if (!closed) return jinja_unescape(text);
  }
  return "";
}

// The "Today Date" of a Llama 3.1 template: today's date when it asks strftime_now (Hugging Face
// defines it), else its fixed date_string.
inline std::string llama31_date(std::string_view jinja) {
  if (jinja.find("strftime_now") != std::string_view::npos) {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char buf[32];
    return std::string(buf, std::strftime(buf, sizeof buf, "%d %b %Y", &local));
  }
  const std::string_view key = "date_string = \"";
  const size_t at = jinja.find(key);
  if (at != std::string_view::npos) {
    const size_t end = jinja.find('"', at + key.size());
    if (end != std::string_view::npos)
      return std::string(jinja.substr(at + key.size(), end - at - key.size()));
  }
  return ChatFormat(ChatTemplate::kLlama31).date;
}

inline std::optional<ChatTemplate> detect_chat_family(std::string_view jinja) {
  const auto has = [&](std::string_view s) { return jinja.find(s) != std::string_view::npos; };
  if (has("<|im_start|>")) return ChatTemplate::kChatML;
  if (has("<|start_header_id|>")) {
    return has("Cutting Knowledge Date") ? ChatTemplate::kLlama31 : ChatTemplate::kLlama3;
  }
  if (has("<start_of_turn>")) return ChatTemplate::kGemma;
  if (has("[INST]")) {
    if (has("<<SYS>>")) return ChatTemplate::kLlama2;
    if (has("[SYSTEM_PROMPT]")) return std::nullopt;  // Mistral's v7 format: not rendered here
    // The Mistral versions differ in the spaces around the markers of their string literals.
    if (has(" [INST] ")) return ChatTemplate::kMistralV1;
    if (has("[INST] ") && has(" [/INST]")) return ChatTemplate::kMistralLegacy;
    if (has("[INST] ")) return ChatTemplate::kMistralV3;
    return ChatTemplate::kMistralV3Tekken;
  }
  if (has("<|user|>")) return has("<|end|>") ? ChatTemplate::kPhi3 : ChatTemplate::kZephyr;
  return std::nullopt;
}

// Templates that take one system message, first, and then user and assistant turns in
// alternation (their Jinja raises an error otherwise, or drops the message).
struct AlternatingTurns {
  const std::string* system = nullptr;
  std::vector<const ChatMessage*> turns;
};

inline AlternatingTurns alternating_turns(const std::vector<ChatMessage>& messages,
                                          ChatTemplate family) {
  AlternatingTurns t;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == ChatRole::kSystem) {
      if (i != 0) {
        fail(std::string("the ") + chat_template_name(family) +
             " chat format takes one system message, at the start; message " +
             std::to_string(i + 1) + " is another");
      }
      t.system = &m.content;
      continue;
    }
    const ChatRole expected = t.turns.size() % 2 == 0 ? ChatRole::kUser : ChatRole::kAssistant;
    if (m.role != expected) {
      fail(std::string("the ") + chat_template_name(family) +
           " chat format needs user and assistant messages in turn, starting with the user; "
           "message " +
           std::to_string(i + 1) + " is a " + chat_role_name(m.role) + " message");
    }
    t.turns.push_back(&m);
  }
  return t;
}

// Qwen3's assistant turn: "<think>" reasoning is dropped from answers before the last user
// message, and written in its own block in the answers after it.
inline std::string chatml_reasoning_answer(std::string_view content, bool after_last_query,
                                           bool last) {
  std::string_view answer = content, reasoning;
  const size_t close = content.rfind("</think>");
  if (close != std::string_view::npos) {
    answer = lstrip_char(content.substr(close + 8), '\n');
    reasoning = rstrip_char(content.substr(0, content.find("</think>")), '\n');
    const size_t open = reasoning.rfind("<think>");
    if (open != std::string_view::npos) reasoning.remove_prefix(open + 7);
    reasoning = lstrip_char(reasoning, '\n');
  }
  if (after_last_query && (last || !reasoning.empty())) {
    return "<think>\n" + std::string(rstrip_char(lstrip_char(reasoning, '\n'), '\n')) +
           "\n</think>\n\n" + std::string(lstrip_char(answer, '\n'));
  }
  return std::string(answer);
}

}  // namespace detail

const char* chat_template_name(ChatTemplate family) {
  return detail::chat_template_info(family).name;
}

std::optional<ChatTemplate> chat_template_from_name(std::string_view name) {
  for (const detail::ChatTemplateInfo& t : detail::kChatTemplates) {
    if (name == t.name) return t.family;
  }
  return std::nullopt;
}

std::string chat_template_names() {
  std::string names;
  for (const detail::ChatTemplateInfo& t : detail::kChatTemplates) {
    names += (names.empty() ? "" : ", ") + std::string(t.name);
  }
  return names;
}

const char* chat_role_name(ChatRole role) {
  switch (role) {
    case ChatRole::kSystem:
      return "system";
    case ChatRole::kUser:
      return "user";
    case ChatRole::kAssistant:
      return "assistant";
  }
  return "?";
}

ChatFormat::ChatFormat(ChatTemplate family_)
    : family(family_), writes_bos(detail::chat_template_info(family_).writes_bos) {}

std::optional<ChatFormat> ChatFormat::detect(std::string_view jinja) {
  const std::optional<ChatTemplate> family = detail::detect_chat_family(jinja);
  if (!family) return std::nullopt;
  ChatFormat f(*family);
  f.writes_bos = jinja.find("bos_token") != std::string_view::npos;
  if (f.family == ChatTemplate::kChatML) {
    f.default_system = detail::chatml_default_system(jinja);
    f.strips_reasoning = jinja.find("</think>") != std::string_view::npos;
  }
  if (f.family == ChatTemplate::kLlama31) f.date = detail::llama31_date(jinja);
  return f;
}

ChatFormat ChatFormat::choose(std::string_view jinja, const Tokenizer& tokenizer,
                              std::string_view template_name) {
  const std::optional<ChatFormat> detected = detect(jinja);
  ChatFormat f;
  if (!template_name.empty()) {
    const std::optional<ChatTemplate> named = chat_template_from_name(template_name);
    if (!named) {
      detail::fail("unknown chat template '" + std::string(template_name) +
                   "'; the known ones are " + chat_template_names());
    }
    // The model's own template, when it is of the named family, still decides the details.
    f = detected && detected->family == *named ? *detected : ChatFormat(*named);
  } else if (detected) {
    f = *detected;
  } else {
    log(LogLevel::kWarn,
        std::string(jinja.empty() ? "the model has no chat template (tokenizer.chat_template)"
                                  : "the model's chat template (tokenizer.chat_template) is of "
                                    "no family sllm knows") +
            "; using ChatML. Name the model's format to override it (sllm chat --chat-template "
            "NAME): " +
            chat_template_names());
  }
  f.bos_text = tokenizer.bos() >= 0 ? tokenizer.token_text(tokenizer.bos()) : "";
  f.eos_text = tokenizer.eos() >= 0 ? tokenizer.token_text(tokenizer.eos()) : "";
  return f;
}

ChatFormat ChatFormat::for_model(const Model& model, std::string_view template_name) {
  return choose(model.gguf().get_or<std::string>("tokenizer.chat_template", ""), model.tokenizer(),
                template_name);
}

std::string ChatFormat::render(const std::vector<ChatMessage>& messages,
                               bool add_generation_prompt) const {
  using detail::strip;
  const std::string bos = writes_bos ? bos_text : "";
  std::string out;
  switch (family) {
    case ChatTemplate::kChatML: {
      if (!default_system.empty() && (messages.empty() || messages[0].role != ChatRole::kSystem)) {
        out += "<|im_start|>system\n" + default_system + "<|im_end|>\n";
      }
      size_t last_query = messages.empty() ? 0 : messages.size() - 1;
      for (size_t i = 0; i < messages.size(); ++i) {
        if (messages[i].role == ChatRole::kUser) last_query = i;
      }
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        const std::string content = strips_reasoning && m.role == ChatRole::kAssistant
                                        ? detail::chatml_reasoning_answer(m.content, i > last_query,
                                                                          i + 1 == messages.size())
                                        : m.content;
        out +=
            "<|im_start|>" + std::string(chat_role_name(m.role)) + "\n" + content + "<|im_end|>\n";
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    }
    case ChatTemplate::kLlama3:
    case ChatTemplate::kLlama31: {
      out += bos;
      size_t first = 0;
      if (family == ChatTemplate::kLlama31) {
        // The system header is always written, dated, with the system message if there is one.
        const bool has_system = !messages.empty() && messages[0].role == ChatRole::kSystem;
        out +=
            "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
            "2023\nToday Date: " +
            date + "\n\n" + (has_system ? strip(messages[0].content) : "") + "<|eot_id|>";
        first = has_system ? 1 : 0;
      }
      for (size_t i = first; i < messages.size(); ++i) {
        out += "<|start_header_id|>" + std::string(chat_role_name(messages[i].role)) +
               "<|end_header_id|>\n\n" + strip(messages[i].content) + "<|eot_id|>";
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    }
    case ChatTemplate::kPhi3:
      out += bos;
      for (const ChatMessage& m : messages) {
        out += "<|" + std::string(chat_role_name(m.role)) + "|>\n" + m.content + "<|end|>\n";
      }
      out += add_generation_prompt ? "<|assistant|>\n" : eos_text;
      break;
    case ChatTemplate::kZephyr:
      for (const ChatMessage& m : messages) {
        out += "<|" + std::string(chat_role_name(m.role)) + "|>\n" + m.content + eos_text + "\n";
      }
      if (add_generation_prompt && !messages.empty()) out += "<|assistant|>\n";
      break;
    case ChatTemplate::kGemma: {
      // Gemma 3 writes the system message at the start of the first user turn (Gemma 2's
      // template refuses system messages; sllm writes them the Gemma 3 way).
      const detail::AlternatingTurns t = detail::alternating_turns(messages, family);
      out += bos;
      for (size_t i = 0; i < t.turns.size(); ++i) {
        const bool user = t.turns[i]->role == ChatRole::kUser;
        out += std::string("<start_of_turn>") + (user ? "user" : "model") + "\n" +
               (i == 0 && t.system != nullptr ? *t.system + "\n\n" : "") +
               strip(t.turns[i]->content) + "<end_of_turn>\n";
      }
      if (add_generation_prompt) out += "<start_of_turn>model\n";
      break;
    }
    case ChatTemplate::kLlama2: {
      // The template ignores add_generation_prompt: a conversation ends with " [/INST]".
      const detail::AlternatingTurns t = detail::alternating_turns(messages, family);
      for (size_t i = 0; i < t.turns.size(); ++i) {
        const std::string& content = t.turns[i]->content;
        if (t.turns[i]->role == ChatRole::kUser) {
          out += bos + "[INST] " +
                 strip(i == 0 && t.system != nullptr
                           ? "<<SYS>>\n" + *t.system + "\n<</SYS>>\n\n" + content
                           : content) +
                 " [/INST]";
        } else {
          out += " " + strip(content) + " " + eos_text;
        }
      }
      break;
    }
    case ChatTemplate::kMistralLegacy:
    case ChatTemplate::kMistralV1:
    case ChatTemplate::kMistralV3:
    case ChatTemplate::kMistralV3Tekken: {
      // The templates ignore add_generation_prompt. Mistral v0.1/v0.2 put the system message in
      // the first user turn, v0.3 and Nemo in the last one (so it moves as the conversation
      // grows); the first templates refuse system messages, and sllm writes them as v0.1 does.
      const detail::AlternatingTurns t = detail::alternating_turns(messages, family);
      const bool system_last =
          family == ChatTemplate::kMistralV3 || family == ChatTemplate::kMistralV3Tekken;
      const char* open = family == ChatTemplate::kMistralV1         ? " [INST] "
                         : family == ChatTemplate::kMistralV3Tekken ? "[INST]"
                                                                    : "[INST] ";
      const char* close = system_last ? "[/INST]" : " [/INST]";
      out += bos;
      for (size_t i = 0; i < t.turns.size(); ++i) {
        const std::string& content = t.turns[i]->content;
        if (t.turns[i]->role == ChatRole::kUser) {
          const bool with_system =
              t.system != nullptr && i == (system_last ? t.turns.size() - 1 : 0);
          out += open + (with_system ? *t.system + "\n\n" : "") + content + close;
        } else if (family == ChatTemplate::kMistralV3) {
          out += " " + strip(content) + eos_text;
        } else {
          out += (family == ChatTemplate::kMistralV1 ? " " : "") + content + eos_text;
        }
      }
      break;
    }
    case ChatTemplate::kRaw:
      for (const ChatMessage& m : messages) out += m.content;
      break;
  }
  return out;
}

std::vector<std::string> ChatFormat::stop_strings() const {
  switch (family) {
    case ChatTemplate::kChatML:
      return {"<|im_end|>", "<|im_start|>"};
    case ChatTemplate::kLlama3:
    case ChatTemplate::kLlama31:
      return {"<|eot_id|>", "<|start_header_id|>"};
    case ChatTemplate::kPhi3:
      return {"<|end|>", "<|user|>", "<|endoftext|>"};
    case ChatTemplate::kGemma:
      return {"<end_of_turn>", "<start_of_turn>"};
    case ChatTemplate::kLlama2:
    case ChatTemplate::kMistralLegacy:
    case ChatTemplate::kMistralV1:
    case ChatTemplate::kMistralV3:
    case ChatTemplate::kMistralV3Tekken:
      return {"[INST]"};
    case ChatTemplate::kZephyr:
      return {"</s>", "<|user|>"};
    case ChatTemplate::kRaw:
      return {};
  }
  return {};
}

std::vector<int32_t> tokenize_chat(const Tokenizer& tokenizer, std::string_view rendered) {
  std::vector<int32_t> ids = tokenizer.encode(rendered, /*add_special=*/false,
                                              /*parse_special=*/true);
  if (tokenizer.add_bos() && tokenizer.bos() >= 0 && (ids.empty() || ids[0] != tokenizer.bos())) {
    ids.insert(ids.begin(), tokenizer.bos());
  }
  return ids;
}

Chat::Chat(Session& session, ChatFormat format) : session_(&session), format_(std::move(format)) {}

Chat::Chat(Session& session) : Chat(session, ChatFormat::for_model(session.model())) {}

void Chat::add(ChatRole role, std::string content) {
  messages_.push_back({role, std::move(content)});
}

void Chat::reset() {
  messages_.clear();
  session_->reset();
}

ChatStats Chat::respond(const GenerateOptions& options, const PieceFn& on_piece) {
  if (messages_.empty() || messages_.back().role != ChatRole::kUser) {
    detail::fail("a chat answers a user message: add one before respond()");
  }
  const std::vector<int32_t> tokens =
      tokenize_chat(session_->model().tokenizer(), format_.render(messages_, true));
  if (tokens.empty()) detail::fail("the conversation renders to no tokens: nothing to answer");
  if (tokens.size() > session_->n_ctx()) {
    detail::fail("the conversation is " + std::to_string(tokens.size()) +
                 " tokens but the context holds " + std::to_string(session_->n_ctx()) +
                 "; start again (reset) or use a larger context");
  }
  // The context keeps the tokens that match the conversation rendered now. Usually that is all
  // of it, up to the new user turn. When they diverge (a template that rewrites an earlier turn,
  // such as Mistral v0.3 moving the system message to the last user turn; an answer whose
  // tokens are not how its text tokenizes; an answer cut at a stop string), the context is cut
  // at the divergence and everything after it is recomputed. The last prompt token is always
  // evaluated, for the logits of the first answer token.
  const std::vector<int32_t>& cached = session_->tokens();
  const size_t limit = std::min(cached.size(), tokens.size() - 1);
  size_t keep = 0;
  while (keep < limit && cached[keep] == tokens[keep]) ++keep;
  if (keep < cached.size()) session_->truncate(keep);

  GenerateOptions opt = options;
  for (std::string& s : format_.stop_strings()) opt.stop.push_back(std::move(s));
  std::string answer;
  ChatStats stats;
  static_cast<GenerateStats&>(stats) =
      session_->generate(std::vector<int32_t>(tokens.begin() + std::ptrdiff_t(keep), tokens.end()),
                         opt, [&](std::string_view piece) {
                           answer.append(piece);
                           on_piece(piece);
                         });
  stats.n_cached = keep;
  messages_.push_back({ChatRole::kAssistant, std::move(answer)});
  return stats;
}

}  // namespace sllm
