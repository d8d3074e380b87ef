// Chat layer: conversations in a model's chat format, answered over a Session whose context (KV
// cache) keeps the conversation, so that each turn computes only its new tokens.
//
// GGUF files carry their chat format as a Jinja template (tokenizer.chat_template). sllm does not
// run Jinja: it recognises the template's family from its text and renders conversations the
// way that template renders them (with Hugging Face's trim_blocks/lstrip_blocks, "trim" meaning
// Python's strip of ASCII whitespace).
#include <optional>

namespace sllm {

// The chat formats sllm renders. Names as chat_template_name gives them (--chat-template).
enum class ChatTemplate : uint8_t {
  kChatML,           // "chatml": <|im_start|>role\n...<|im_end|>\n (Qwen, SmolLM, OpenHermes)
  kLlama2,           // "llama2": <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] ... </s>
  kLlama3,           // "llama3": <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
  kLlama31,          // "llama3.1": llama3 with the knowledge-date system header (3.1, 3.2, 3.3)
  kPhi3,             // "phi3": <|role|>\n...<|end|>\n
  kGemma,            // "gemma": <start_of_turn>user\n...<end_of_turn>\n, system in the first turn
  kMistralLegacy,    // "mistral-legacy": [INST] ... [/INST]...</s> (first Mistral/Mixtral ones)
  kMistralV1,        // "mistral-v1":  [INST] ... [/INST] ...</s> (Mistral 7B v0.1/v0.2 updated)
  kMistralV3,        // "mistral-v3": [INST] ...[/INST] ...</s>, system in the last user turn
  kMistralV3Tekken,  // "mistral-v3-tekken": [INST]...[/INST]...</s> (Mistral Nemo)
  kZephyr,           // "zephyr": <|role|>\n...</s>\n (Zephyr, TinyLlama chat)
  kRaw,              // "raw": the messages' texts one after another, no markup (base models)
};

const char* chat_template_name(ChatTemplate family);
// The family of a name as chat_template_name writes it; nothing for other names.
std::optional<ChatTemplate> chat_template_from_name(std::string_view name);
// All names, comma-separated, for messages.
std::string chat_template_names();

enum class ChatRole : uint8_t { kSystem, kUser, kAssistant };
const char* chat_role_name(ChatRole role);  // "system", "user", "assistant"

struct ChatMessage {
  ChatRole role;
  std::string content;
};

// How one model writes conversations: the template family plus the facts of its template text
// that change the output.
struct ChatFormat {
  ChatTemplate family = ChatTemplate::kChatML;
  std::string bos_text = "<s>";  // what the template's bos_token and eos_token stand for
  std::string eos_text = "</s>";
  bool writes_bos = false;        // the template writes bos_token itself (not only the tokenizer)
  std::string default_system;     // chatml: the system turn written when the conversation has none
  bool strips_reasoning = false;  // chatml (Qwen3): earlier answers lose "<think>...</think>"
  std::string date = "26 Jul 2024";  // llama3.1: the "Today Date" of the system header

  // The family with the facts its best-known template has (e.g. llama3 writes BOS, chatml has
  // no default system turn).
  explicit ChatFormat(ChatTemplate family_ = ChatTemplate::kChatML);

  // The family of a Jinja template text and the facts the text decides; nothing when the text
  // belongs to none of the families. Llama 3.2's template dates its system header with
  // strftime_now: today's date then.
  static std::optional<ChatFormat> detect(std::string_view jinja);
  // The format for a model with this tokenizer and template text: template_name's family when
  // given (Error naming the known names when it is none), else the family of the template;
  // a template of no known family, or none, falls back to ChatML with a warning (sllm::log).
  // bos_text and eos_text come from the tokenizer.
  static ChatFormat choose(std::string_view jinja, const Tokenizer& tokenizer,
                           std::string_view template_name = {});
  // choose() with the model's tokenizer.chat_template.
  static ChatFormat for_model(const Model& model, std::string_view template_name = {});

  // The conversation as the template renders it; add_generation_prompt appends the start of an
  // assistant turn. Error when the family cannot express the conversation as its template would
  // refuse it: roles that do not alternate user/assistant (llama2, gemma, mistral-*), or a system
  // message after the first.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // Text that ends an answer in this format when the model writes it as text rather than as its
  // end-of-turn token (which Tokenizer::is_eog catches).
  std::vector<std::string> stop_strings() const;
};

// Token ids of a rendered conversation: control tokens in it (e.g. "<|im_start|>") are parsed,
// and BOS is added when the tokenizer asks for one unless the text already begins with it
// (templates that write bos_token themselves), so there is never a second BOS.
std::vector<int32_t> tokenize_chat(const Tokenizer& tokenizer, std::string_view rendered);

struct ChatStats : GenerateStats {
  size_t n_cached = 0;  // prompt tokens already in the context from earlier turns
};

// A conversation over a Session. The session's context holds the conversation: each respond()
// renders the whole conversation, keeps the context's tokens that still match it, and evaluates
// only the rest.
class Chat {
 public:
  // The session must outlive the Chat. Whatever its context holds already is kept as far as it
  // matches the conversation.
  Chat(Session& session, ChatFormat format);
  explicit Chat(Session& session);  // the format of the session's model (ChatFormat::for_model)
  Chat(const Chat&) = delete;
  Chat& operator=(const Chat&) = delete;

  const ChatFormat& format() const { return format_; }
  const std::vector<ChatMessage>& messages() const { return messages_; }
  Session& session() const { return *session_; }

  void add(ChatRole role, std::string content);
  // Streams the assistant's answer to the conversation, which must end with a user message,
  // and appends it as an assistant message (also when generation stops early, e.g. cancelled).
  // The answer ends at the model's end-of-turn token, a stop string of the format or of
  // options, options.max_tokens, or a full context. Error (conversation unchanged) when the
  // conversation no longer fits in the context.
  ChatStats respond(const GenerateOptions& options, const PieceFn& on_piece);
  void reset();  // forgets the messages and empties the context

 private:
  Session* session_;
  ChatFormat format_;
  std::vector<ChatMessage> messages_;
};

}  // namespace sllm
