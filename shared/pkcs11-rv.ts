// The CK_RV values the key channel carries (PKCS#11 v2.40, section 11.1).
export const CKR = {
  OK: 0x00,
  HOST_MEMORY: 0x02,
  GENERAL_ERROR: 0x05,
  ARGUMENTS_BAD: 0x07,
  DATA_INVALID: 0x20,
  DATA_LEN_RANGE: 0x21,
  DEVICE_ERROR: 0x30,
  ENCRYPTED_DATA_INVALID: 0x40,
  ENCRYPTED_DATA_LEN_RANGE: 0x41,
  KEY_HANDLE_INVALID: 0x60,
  KEY_TYPE_INCONSISTENT: 0x63,
  MECHANISM_INVALID: 0x70,
  MECHANISM_PARAM_INVALID: 0x71,
  PIN_INCORRECT: 0xa0,
  PIN_LOCKED: 0xa4,
  TOKEN_NOT_PRESENT: 0xe0,
  USER_NOT_LOGGED_IN: 0x101,
} as const;
export type CkRv = (typeof CKR)[keyof typeof CKR];

/** An error that travels to the PKCS#11 module as its CK_RV; the message stays in the enclave's log. */
export class P11Error extends Error {
  constructor(readonly rv: number, message: string) { super(message); }
}
