// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title ESP platform token
/// @notice An ERC-20 token owned by the platform. Besides the standard interface the
/// owner manages balances directly (the thesis's /token/add, /token/delete and /token/set):
///   add(account, value)     mints value to account            (thesis /token/add)
///   remove(account, value)  burns value from account          (thesis /token/delete;
///                           `delete` is a Solidity keyword)
///   set(account, value)     makes account's balance exactly value (thesis /token/set)
/// Every balance change emits Transfer, minting from and burning to the zero address,
/// so that indexers rebuild balances and totalSupply from the events alone.
/// Operators (the project market) may mint rewards and move a buyer's tokens for a
/// purchase the buyer signed, so that buying is one transaction without approve().
contract PlatformToken {
    string public name;
    string public symbol;
    uint8 public immutable decimals;
    uint256 public totalSupply;
    address public owner;

    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    mapping(address => bool) public isOperator;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    event OperatorSet(address indexed operator, bool allowed);

    modifier onlyOwner() {
        require(msg.sender == owner, "not the owner");
        _;
    }

    modifier onlyOperator() {
        require(isOperator[msg.sender], "not an operator");
        _;
    }

    constructor(string memory name_, string memory symbol_, uint8 decimals_) {
        name = name_;
        symbol = symbol_;
        decimals = decimals_;
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
    }

    // -- ERC-20 ------------------------------------------------------------

    /// @notice Move value of the caller's tokens to `to`.
    function transfer(address to, uint256 value) external returns (bool) {
        _transfer(msg.sender, to, value);
        return true;
    }

    /// @notice Let `spender` move up to value of the caller's tokens.
    function approve(address spender, uint256 value) external returns (bool) {
        require(spender != address(0), "zero address");
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    /// @notice Move value from `from` to `to` within the caller's allowance.
    /// An allowance of type(uint256).max is unlimited and never decreases.
    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            require(allowed >= value, "insufficient allowance");
            unchecked {
                allowance[from][msg.sender] = allowed - value;
            }
        }
        _transfer(from, to, value);
        return true;
    }

    // -- owner: the platform's balance management ---------------------------

    /// @notice Mint value to account (thesis /token/add).
    function add(address account, uint256 value) external onlyOwner {
        _mint(account, value);
    }

    /// @notice Burn value from account (thesis /token/delete).
    function remove(address account, uint256 value) external onlyOwner {
        _burn(account, value);
    }

    /// @notice Set account's balance to exactly value, minting or burning the difference (thesis /token/set).
    function set(address account, uint256 value) external onlyOwner {
        require(account != address(0), "zero address");
        uint256 current = balanceOf[account];
        if (value > current) {
            _mint(account, value - current);
        } else if (value < current) {
            _burn(account, current - value);
        }
    }

    /// @notice Allow or forbid `operator` to mint and to move tokens for purchases.
    function setOperator(address operator, bool allowed) external onlyOwner {
        require(operator != address(0), "zero address");
        isOperator[operator] = allowed;
        emit OperatorSet(operator, allowed);
    }

    /// @notice Hand the token to a new owner.
    function transferOwnership(address newOwner) external onlyOwner {
        require(newOwner != address(0), "zero address");
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }

    // -- operators: the project market ---------------------------------------

    /// @notice Mint value to `to` (the market's publish reward).
    function operatorMint(address to, uint256 value) external onlyOperator {
        _mint(to, value);
    }

    /// @notice Move value from `from` to `to` without an allowance: the market calls it
    /// only for a purchase that `from` signed itself.
    function operatorTransfer(address from, address to, uint256 value) external onlyOperator returns (bool) {
        _transfer(from, to, value);
        return true;
    }

    // -- internals -------------------------------------------------------------

    function _transfer(address from, address to, uint256 value) internal {
        require(from != address(0) && to != address(0), "zero address");
        uint256 balance = balanceOf[from];
        require(balance >= value, "insufficient balance");
        unchecked {
            // Cannot underflow (checked above) nor overflow (the sum of balances is totalSupply).
            balanceOf[from] = balance - value;
            balanceOf[to] += value;
        }
        emit Transfer(from, to, value);
    }

    function _mint(address to, uint256 value) internal {
        require(to != address(0), "zero address");
        // Checked: a mint past 2**256-1 total supply reverts with Panic(0x11).
        totalSupply += value;
        unchecked {
            balanceOf[to] += value;
        }
        emit Transfer(address(0), to, value);
    }

    function _burn(address from, uint256 value) internal {
        require(from != address(0), "zero address");
        uint256 balance = balanceOf[from];
        require(balance >= value, "insufficient balance");
        unchecked {
            balanceOf[from] = balance - value;
            totalSupply -= value;
        }
        emit Transfer(from, address(0), value);
    }
}
