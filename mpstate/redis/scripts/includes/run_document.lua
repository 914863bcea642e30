-- run_document(key): the run hash as one JSON object, built from the stored JSON values without
-- decoding any of them (Lua's cjson is lossy); fields starting with '_' are bookkeeping and left out.
local function run_document(key)
  local flat = redis.call('HGETALL', key)
  local parts = {}
  for i = 1, #flat, 2 do
    local name = flat[i]
    if string.byte(name, 1) ~= 95 then
      parts[#parts + 1] = '"' .. name .. '":' .. flat[i + 1]
    end
  end
  return '{' .. table.concat(parts, ',') .. '}'
end
